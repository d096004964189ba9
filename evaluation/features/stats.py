"""Per-latent statistics and dashboard examples from one pass over the activation store.

No model runs: the store's activations are encoded chunk by chunk and every statistic is
accumulated on the fly, per latent, vectorised over all latents:
- density, max and mean activation (over the tokens where it fires), dead / dense flags, and a
  "too few examples" flag for latents that fired on fewer than `min_examples` tokens;
- top examples: a streaming top-k over all tokens;
- quantile examples, convention "equal-count bands by rank over a uniform reservoir sample": a
  uniform sample (bottom-k of random keys) of each latent's activations is kept; at the end it is
  sorted and cut into `n_bands` bands of equal count, and `per_band` examples are taken from each;
- random activating examples (from the same reservoir) and non-activating examples (from a
  uniform sample of token positions, keeping those where the latent is zero);
- a histogram of non-zero activations over fixed log-spaced bins (exact counts, one pass).
Each example is a window of `window` tokens inside its sequence (token ids come from the store)
with the latent's activation on every token of the window.
BOS, special tokens and invalid sequences are excluded, as in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.activations.store import ActivationStore
from saelab.evaluation.features.config import FeatureStatsConfig

HIST_EDGES = np.logspace(-3, 3, 49)
"""Activation histogram bins: 10^-3 … 10^3, 8 per decade (values outside are clipped in)."""


class _RunningTop:
    """Per-latent best-k entries by a score (largest wins).

    Slots are unordered: entries that enter overwrite the ones they evict in place, so a batch
    costs work in proportion to what changes (after the first batches, very little) rather
    than to k · d_sae. `ordered()` sorts once at the end.
    """

    EMPTY = -1e30
    """Score of an empty slot: below any real score, above the -inf padding of candidates,
    so an empty slot is never evicted for padding."""

    def __init__(self, k: int, d_sae: int, window: int) -> None:
        self.k = k
        self.score = torch.full((k, d_sae), self.EMPTY)
        self.value = torch.zeros(k, d_sae)
        self.seq = torch.zeros(k, d_sae, dtype=torch.long)
        self.pos = torch.zeros(k, d_sae, dtype=torch.long)
        self.start = torch.zeros(k, d_sae, dtype=torch.long)
        self.acts = torch.zeros(k, d_sae, window)

    def offer(
        self, score: Tensor, value: Tensor, rows: Tensor, feats: Tensor, cut: _Cutter
    ) -> None:
        """Candidate entries as flat lists (score, value, batch row, latent)."""
        worst = self.score.min(0).values
        keep = score > worst[feats]
        if not keep.any():
            return
        score, value, rows, feats = score[keep], value[keep], rows[keep], feats[keep]
        # at most k candidates per latent, best first: sort by score, then (stably) by latent
        order = torch.argsort(score, descending=True)
        order = order[torch.argsort(feats[order], stable=True)]
        score, value, rows, feats = score[order], value[order], rows[order], feats[order]
        touched, col = torch.unique_consecutive(feats, return_inverse=True)
        first = torch.searchsorted(feats, touched)
        rank = torch.arange(len(feats)) - first[col]
        keep = rank < self.k
        score, value, rows, col, rank = score[keep], value[keep], rows[keep], col[keep], rank[keep]
        cand = torch.full((self.k, len(touched)), -torch.inf)
        cand[rank, col] = score
        best = torch.cat([self.score[:, touched], cand]).topk(self.k, dim=0).indices  # [k, T]
        enter = best >= self.k
        kept = torch.zeros(self.k + 1, len(touched), dtype=torch.bool)
        kept.scatter_(0, torch.where(enter, self.k, best), True)
        # pair evicted slots with entering candidates, latent by latent (equal counts)
        ev_col, ev_slot = (~kept[: self.k]).t().nonzero(as_tuple=True)
        en_col, en_j = enter.t().nonzero(as_tuple=True)
        src_rank = best[en_j, en_col] - self.k
        lookup = torch.full((self.k, len(touched)), -1, dtype=torch.long)
        lookup[rank, col] = torch.arange(len(rank))
        src = lookup[src_rank, en_col]
        latent = touched[ev_col]
        seq, pos, start = cut.where(rows[src])
        self.score[ev_slot, latent] = score[src]
        self.value[ev_slot, latent] = value[src]
        self.seq[ev_slot, latent], self.pos[ev_slot, latent], self.start[ev_slot, latent] = (
            seq,
            pos,
            start,
        )
        self.acts[ev_slot, latent] = cut.windows(rows[src], latent)

    @property
    def filled(self) -> Tensor:
        """Bool `[k, d_sae]`: slots holding a real entry."""
        return self.score > self.EMPTY

    def ordered(self) -> _RunningTop:
        """The same entries with each latent's slots sorted best first."""
        order = self.score.argsort(dim=0, descending=True)
        out = _RunningTop.__new__(_RunningTop)
        out.k = self.k
        for name in ("score", "value", "seq", "pos", "start"):
            setattr(out, name, getattr(self, name).gather(0, order))
        out.acts = self.acts.gather(0, order.unsqueeze(-1).expand_as(self.acts))
        return out


@dataclass
class FeatureStats:
    """The outcome of `feature_stats`: arrays over latents plus the kept examples."""

    config: dict
    n_tokens: int
    fire_counts: np.ndarray
    sum_acts: np.ndarray
    max_acts: np.ndarray
    hist_counts: np.ndarray
    top: _RunningTop
    sample: _RunningTop
    background: dict
    tokens: np.ndarray

    @property
    def density(self) -> np.ndarray:
        return self.fire_counts / max(self.n_tokens, 1)

    @property
    def mean_acts(self) -> np.ndarray:
        return np.where(self.fire_counts > 0, self.sum_acts / np.maximum(self.fire_counts, 1), 0.0)


@torch.no_grad()
def feature_stats(
    sae,
    store: ActivationStore,
    hook: str,
    cfg: FeatureStatsConfig | None = None,
    chunks: list[int] | None = None,
    progress=None,
) -> FeatureStats:
    """One pass over `chunks` (default: all committed) of `hook`, encoding with `sae`;
    `progress(n_tokens)` is called after each chunk."""
    cfg = cfg or FeatureStatsConfig()
    d_sae, seq_len = sae.d_sae, store.seq_len
    window = min(cfg.window, seq_len)
    gen = torch.Generator().manual_seed(cfg.seed)
    top = _RunningTop(cfg.n_top, d_sae, window)
    sample = _RunningTop(cfg.reservoir, d_sae, window)
    background = {
        "score": torch.full((cfg.token_sample,), _RunningTop.EMPTY),
        "seq": torch.zeros(cfg.token_sample, dtype=torch.long),
        "pos": torch.zeros(cfg.token_sample, dtype=torch.long),
        "start": torch.zeros(cfg.token_sample, dtype=torch.long),
        "acts": torch.zeros(cfg.token_sample, d_sae, window),
    }
    fire = torch.zeros(d_sae, dtype=torch.float64)
    total = torch.zeros(d_sae, dtype=torch.float64)
    peak = torch.zeros(d_sae)
    n_bins = len(HIST_EDGES) - 1
    hist = torch.zeros(d_sae * n_bins, dtype=torch.float64)
    log_edges = torch.from_numpy(np.log10(HIST_EDGES)).float()
    n_tokens = 0
    for chunk in chunks if chunks is not None else store.committed_chunks():
        acts = store.read_acts(hook, chunk).float()
        mask = torch.from_numpy(store.token_mask(chunk))
        first_seq = store.chunk_rows(chunk).start
        for s0 in range(0, acts.shape[0], cfg.seqs_per_batch):
            x = acts[s0 : s0 + cfg.seqs_per_batch]
            m = mask[s0 : s0 + cfg.seqs_per_batch].reshape(-1)
            f = sae.encode(x.reshape(-1, sae.d_in)).float()
            n_tokens += int(m.sum())
            rows, feats = (f > 0).nonzero(as_tuple=True)
            eligible = m[rows]
            rows, feats = rows[eligible], feats[eligible]
            vals = f[rows, feats]
            fire += torch.bincount(feats, minlength=d_sae)
            total += torch.bincount(feats, weights=vals.double(), minlength=d_sae)
            peak.scatter_reduce_(0, feats, vals, reduce="amax")
            bins = torch.bucketize(vals.log10(), log_edges[1:-1])
            hist += torch.bincount(feats * n_bins + bins, minlength=d_sae * n_bins)
            cut = _Cutter(f, m, seq_len, window, cfg.before, first_seq + s0)
            top.offer(vals, vals, rows, feats, cut)
            sample.offer(torch.rand(len(vals), generator=gen), vals, rows, feats, cut)
            _sample_positions(background, m, cut, gen)
        if progress is not None:
            progress(n_tokens)
    return FeatureStats(
        config=asdict(cfg),
        n_tokens=n_tokens,
        fire_counts=fire.numpy(),
        sum_acts=total.numpy(),
        max_acts=peak.numpy(),
        hist_counts=hist.view(d_sae, -1).numpy(),
        top=top.ordered(),
        sample=sample.ordered(),
        background=background,
        tokens=store.group["tokens"][:],
    )


class _Cutter:
    """Maps rows of a batch of whole sequences to (sequence, position, window)."""

    def __init__(
        self, f: Tensor, mask: Tensor, seq_len: int, window: int, before: int, first_seq: int
    ) -> None:
        self.f, self.mask = f, mask
        self.seq_len, self.window, self.before, self.first_seq = seq_len, window, before, first_seq

    def where(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(sequence in the store, position, window start) of each batch row."""
        seq, pos = rows // self.seq_len, rows % self.seq_len
        start = (pos - self.before).clamp(0, self.seq_len - self.window)
        return seq + self.first_seq, pos, start

    def _window_rows(self, rows: Tensor) -> Tensor:
        seq, pos = rows // self.seq_len, rows % self.seq_len
        start = (pos - self.before).clamp(0, self.seq_len - self.window)
        return (seq * self.seq_len + start).unsqueeze(-1) + torch.arange(self.window)

    def windows(self, rows: Tensor, latents: Tensor) -> Tensor:
        """Activation of latent `latents[i]` over the window of `rows[i]`: `[n, window]`
        (zero at BOS and special tokens, which the statistics exclude)."""
        win = self._window_rows(rows)
        return self.f[win, latents.unsqueeze(-1)] * self.mask[win]

    def all_latent_windows(self, rows: Tensor) -> Tensor:
        """Activations of every latent over each row's window: `[n, d_sae, window]`."""
        win = self._window_rows(rows)
        return (self.f[win] * self.mask[win].unsqueeze(-1)).permute(0, 2, 1)


def _sample_positions(background: dict, mask: Tensor, cut: _Cutter, gen: torch.Generator) -> None:
    """Keep a uniform sample of eligible positions (the largest random keys) with every
    latent's window; windows are cut only for the positions that enter the sample."""
    keys = torch.rand(mask.shape, generator=gen)
    rows = (mask & (keys > background["score"].min())).nonzero().squeeze(1)
    if len(rows) == 0:
        return
    size = len(background["score"])
    best = torch.cat([background["score"], keys[rows]]).topk(size).indices
    enter = best[best >= size] - size
    kept = torch.zeros(size, dtype=torch.bool)
    kept[best[best < size]] = True
    slots = (~kept).nonzero().squeeze(1)  # as many as enter
    new_rows = rows[enter]
    background["score"][slots] = keys[new_rows]
    seq, pos, start = cut.where(new_rows)
    background["seq"][slots], background["pos"][slots], background["start"][slots] = seq, pos, start
    background["acts"][slots] = cut.all_latent_windows(new_rows)
