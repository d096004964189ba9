"""Latent selection (no autograd): fixed top-k, thresholds, and batch-wide top-k.

Variable-k selections use the PADDED layout: `idx [N, kmax]` with kmax the largest count of
any row in the batch (at least 1), and a bool `mask`; padded slots hold idx 0 and mask False,
and callers give them vals 0, so they add nothing to the output or to any weight gradient.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.kernels import checks, native


@torch.no_grad()
def topk_select(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row: `(vals, idx)`, each `[N, k]`, in no particular order.

    On CPU the native kernel (`native.topk_rows`: chunk maxima, then an exact selection among
    the entries of the chunks that can hold a top-k entry, ~2x faster than `_chunked_topk`)
    runs when it is built and the input is float32 without NaN or infinities; elsewhere the
    torch paths below. Ties may be broken differently between the paths."""
    checks.matrix(pre, "pre", "topk_select")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"topk_select: k must be an int, got {k!r}") from None
    if not 1 <= k <= pre.shape[-1]:
        raise ValueError(
            f"topk_select: k must be in 1..{pre.shape[-1]} (the number of latents), got {k}"
        )
    if pre.device.type == "cpu" and pre.shape[0] > 0:
        found = native.topk_rows(pre, k)
        if found is not None:
            return found[0], found[1]
    if _chunked_pays(pre, k):
        return _chunked_topk(pre, k)
    return pre.topk(k, dim=-1, sorted=False)


_CHUNK = 32
"""Columns per chunk of the chunked CPU top-k."""


def _chunked_pays(pre: Tensor, k: int) -> bool:
    """CPU, a row width that splits into chunks, and at least 4k chunks per row (so the
    candidates are at most a quarter of the row); elsewhere `torch.topk` is as fast."""
    n, d = pre.shape
    return pre.device.type == "cpu" and d % _CHUNK == 0 and d // _CHUNK >= 4 * k and n > 0


def _chunked_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact per-row top-k in two passes, ~1.5x faster than `torch.topk` at d 18432, k 64.

    The row's k-th largest value is at least the k-th largest of its chunk maxima (those k
    maxima are k entries of the row), so every top-k entry lies in one of the k chunks with
    the largest maxima: a top-k over those `k * _CHUNK` candidates is the row's top-k (equal
    values may be broken differently than `torch.topk` would; NaN counts as largest in
    both). `torch.topk`'s cost is mostly per row, not per entry, hence the gain."""
    pre = pre.contiguous()
    n, d = pre.shape
    per_row = d // _CHUNK
    chunk_max = pre.view(n, per_row, _CHUNK).amax(2)
    chunks = chunk_max.topk(k, dim=1, sorted=False).indices  # [n, k]
    rows = torch.arange(n, device=pre.device)[:, None] * per_row
    cand = pre.view(n * per_row, _CHUNK).index_select(0, (chunks + rows).view(-1))
    vals, j = cand.view(n, k * _CHUNK).topk(k, dim=1, sorted=False)
    idx = chunks.gather(1, j // _CHUNK) * _CHUNK + j % _CHUNK
    return vals, idx


@torch.no_grad()
def pad_active(active: Tensor) -> tuple[Tensor, Tensor]:
    """Bool `[N, d_sae]` → padded `(idx, mask)`; each row's latents in increasing order."""
    checks.matrix(active, "active", "pad_active", floating=False)
    if active.dtype != torch.bool:
        raise ValueError(f"pad_active: active must be a bool tensor, got {active.dtype}")
    rows, cols = active.nonzero(as_tuple=True)  # row-major, so each row's entries are contiguous
    return _pad_rows(rows, cols, active.shape[0])


@torch.no_grad()
def split_selection(
    idx: Tensor, mask: Tensor, first: Tensor
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Split a padded selection in two, each padded to its own width: the entries where
    `first [N, kmax]` is True, and the other valid ones. Rows keep their entries' order."""
    checks.matrix(idx, "idx", "split_selection", floating=False)
    if mask.shape != idx.shape or first.shape != idx.shape:
        raise ValueError(
            f"split_selection: idx {tuple(idx.shape)}, mask {tuple(mask.shape)} and first "
            f"{tuple(first.shape)} must have one shape"
        )
    parts = []
    for keep in (mask & first, mask & ~first):
        rows, slots = keep.nonzero(as_tuple=True)
        parts.append(_pad_rows(rows, idx[rows, slots], idx.shape[0]))
    return parts[0], parts[1]


def _pad_rows(rows: Tensor, cols: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Entries `(rows[e], cols[e])`, sorted by row, in the padded layout."""
    counts = torch.bincount(rows, minlength=n)  # ~300x faster than active.sum(1) on CPU
    width = max(int(counts.max()) if n else 0, 1)
    starts = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    starts[1:] = counts.cumsum(0)
    slot = torch.arange(len(rows), device=rows.device) - starts[rows]
    idx = torch.zeros(n, width, dtype=torch.long, device=rows.device)
    idx[rows, slot] = cols
    mask = torch.arange(width, device=rows.device)[None, :] < counts[:, None]
    return idx, mask


@torch.no_grad()
def threshold_select(pre: Tensor, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """Entries strictly above a scalar or per-latent `[d_sae]` threshold, padded:
    `(idx, mask)`, each `[N, kmax]`, kmax the largest count in the batch (at least 1)."""
    checks.matrix(pre, "pre", "threshold_select")
    if isinstance(threshold, Tensor) and threshold.numel() != 1:
        checks.vector(threshold, pre.shape[1], "threshold", "threshold_select")
    elif not isinstance(threshold, (Tensor, int, float)):
        raise ValueError(
            f"threshold_select: threshold must be a float or a tensor, got {threshold!r}"
        )
    return pad_active(pre > threshold)


@torch.no_grad()
def batch_topk_select(pre: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """The `round(k · N)` largest entries of the whole batch, padded per row: `(idx, mask)`.
    `k` (the mean per row) may be fractional.

    An exact top-k over N·d_sae values is costly; a sampled threshold first cuts the
    candidates to a few times the number kept, then an exact top-k runs on those (falling
    back to the full batch when the sample misjudged).
    """
    checks.matrix(pre, "pre", "batch_topk_select")
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"batch_topk_select: k must be a number, got {k!r}")
    n, d_sae = pre.shape
    keep = int(round(k * n))
    if not 1 <= keep <= n * d_sae:
        raise ValueError(
            f"batch_topk_select: keeps {keep} of {n * d_sae} entries; choose 0 < k <= {d_sae}"
        )
    flat = pre.reshape(-1)
    chosen = None
    if keep * 8 < flat.numel():
        sample = flat[
            torch.randint(
                flat.numel(),
                (min(flat.numel(), 1 << 16),),
                device=pre.device,
                generator=_generator(pre.device),
            )
        ]
        q = 1.0 - min(1.0, 2.0 * keep / flat.numel())
        cut = torch.quantile(sample.float(), q).to(pre.dtype)
        candidates = (flat >= cut).nonzero().squeeze(1)
        if len(candidates) >= keep:
            chosen = candidates[flat[candidates].topk(keep, sorted=False).indices]
    if chosen is None:
        chosen = flat.topk(keep, sorted=False).indices
    chosen = chosen.sort().values  # row-major: each row's latents contiguous and increasing
    return _pad_rows(torch.div(chosen, d_sae, rounding_mode="floor"), chosen % d_sae, n)


_GENERATORS: dict[str, torch.Generator] = {}


def _generator(device: torch.device) -> torch.Generator:
    """A fixed-seed generator per device: the sample only speeds things up, it never changes
    the result, but a fixed seed keeps runs reproducible bit for bit all the same."""
    key = str(device)
    if key not in _GENERATORS:
        _GENERATORS[key] = torch.Generator(device=device).manual_seed(0)
    return _GENERATORS[key]


@dataclass(frozen=True)
class PositiveTop:
    """Each row's largest positive entries among some columns of a matrix (AuxK's dead
    latents), at most `k` per row: `vals, idx [N, w]`, `idx` positions among the columns,
    w the widest row's count. A row's slots past its own count are padded as the PADDED
    layout pads: idx 0 and vals 0 (a ReLU of them is 0, and so is its gradient)."""

    vals: Tensor
    idx: Tensor

    @staticmethod
    def from_counts(vals: Tensor, idx: Tensor, count: Tensor) -> PositiveTop | None:
        """From `[N, k]` slots whose first `count[r]` of row r are filled (the native
        kernel's output); None when no row has a positive entry."""
        width = int(count.max()) if count.numel() else 0
        if width == 0:
            return None
        pad = torch.arange(width, device=count.device) >= count.unsqueeze(1)
        vals = vals[:, :width].masked_fill(pad, 0.0)
        idx = idx[:, :width].masked_fill(pad, 0)
        return PositiveTop(vals, idx)


@torch.no_grad()
def positive_top(cols: Tensor, k: int) -> PositiveTop | None:
    """`PositiveTop` of the dense columns `cols [N, c]` (the torch path; the native
    selection computes it without forming `cols`): each row's top w entries, w = min(k, the
    widest row's count of positive entries), entries <= 0 padded. Exact for a ReLU after it:
    a row's positive entries among its top k are among its top w. Off the CPU the plain top
    k, uncut and unpadded (reading the width would sync the device each step)."""
    if cols.numel() == 0:
        return None
    if cols.device.type != "cpu":  # the width would cost a device sync every step: no cut
        vals, idx = topk_select(cols, min(k, cols.shape[1]))
        return PositiveTop(vals, idx)
    positive = cols > 0
    width = min(k, int(positive.sum(1).max()))
    if width == 0:
        return None
    vals, idx = topk_select(cols, width)
    pad = vals <= 0
    return PositiveTop(vals.masked_fill(pad, 0.0), idx.masked_fill(pad, 0))
