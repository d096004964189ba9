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

from activations.store import ActivationStore

HIST_EDGES = np.logspace(-3, 3, 49)
"""Activation histogram bins: 10^-3 … 10^3, 8 per decade (values outside are clipped in)."""


@dataclass
class FeatureStatsConfig:
    """How many examples of each kind to keep per latent, and their window."""

    n_top: int = 20
    """Top-activating examples per latent."""
    reservoir: int = 32
    """Uniform sample of each latent's activations, for quantile and random examples."""
    n_bands: int = 4
    """Quantile bands (equal count by rank over the reservoir)."""
    per_band: int = 4
    """Examples per quantile band."""
    n_random: int = 8
    """Random activating examples per latent."""
    n_nonactivating: int = 8
    """Non-activating examples per latent (from a shared uniform sample of positions)."""
    token_sample: int = 64
    """Size of that shared sample of positions."""
    window: int = 24
    """Tokens per example window (kept inside the sequence)."""
    before: int = 18
    """Tokens before the example token, when the sequence allows."""
    min_examples: int = 20
    """Latents firing on fewer tokens are flagged `too_few_examples`."""
    seqs_per_batch: int = 16
    """Sequences encoded at once (whole sequences, so windows can be cut from the batch)."""
    seed: int = 0
    """Seed of the reservoir keys."""


class _RunningTop:
    """Per-latent best-k entries by a score, merged batch by batch (largest score wins)."""

    def __init__(self, k: int, d_sae: int, window: int) -> None:
        self.score = torch.full((k, d_sae), -torch.inf)
        self.value = torch.zeros(k, d_sae)
        self.seq = torch.zeros(k, d_sae, dtype=torch.long)
        self.pos = torch.zeros(k, d_sae, dtype=torch.long)
        self.start = torch.zeros(k, d_sae, dtype=torch.long)
        self.acts = torch.zeros(k, d_sae, window)

    def merge(
        self, score: Tensor, value: Tensor, seq: Tensor, pos: Tensor, start: Tensor, acts: Tensor
    ) -> None:
        k = self.score.shape[0]
        cat = lambda a, b: torch.cat([a, b])  # noqa: E731
        all_score = cat(self.score, score)
        best = all_score.topk(k, dim=0).indices  # [k, d_sae]
        self.score = all_score.gather(0, best)
        self.value = cat(self.value, value).gather(0, best)
        self.seq = cat(self.seq, seq).gather(0, best)
        self.pos = cat(self.pos, pos).gather(0, best)
        self.start = cat(self.start, start).gather(0, best)
        self.acts = cat(self.acts, acts).gather(
            0, best.unsqueeze(-1).expand(-1, -1, self.acts.shape[-1])
        )


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
        "score": torch.full((cfg.token_sample,), -torch.inf),
        "seq": torch.zeros(cfg.token_sample, dtype=torch.long),
        "pos": torch.zeros(cfg.token_sample, dtype=torch.long),
        "start": torch.zeros(cfg.token_sample, dtype=torch.long),
        "acts": torch.zeros(cfg.token_sample, d_sae, window),
    }
    fire = torch.zeros(d_sae, dtype=torch.float64)
    total = torch.zeros(d_sae, dtype=torch.float64)
    peak = torch.zeros(d_sae)
    hist = torch.zeros(d_sae * (len(HIST_EDGES) - 1), dtype=torch.float64)
    log_edges = torch.from_numpy(np.log10(HIST_EDGES)).float()
    n_tokens = 0
    for chunk in chunks if chunks is not None else store.committed_chunks():
        acts = store.read_acts(hook, chunk).float()
        mask = torch.from_numpy(store.token_mask(chunk))
        first_seq = store.chunk_rows(chunk).start
        for s0 in range(0, acts.shape[0], cfg.seqs_per_batch):
            x = acts[s0 : s0 + cfg.seqs_per_batch]
            m = mask[s0 : s0 + cfg.seqs_per_batch].reshape(-1)
            n_seq = x.shape[0]
            f = sae.encode(x.reshape(-1, sae.d_in)).float()
            f[~m] = 0
            n_tokens += int(m.sum())
            fire += (f > 0).sum(0)
            total += f.sum(0)
            peak = torch.maximum(peak, f.max(0).values)
            nz = f > 0
            feat = nz.nonzero()[:, 1]
            bins = torch.bucketize(f[nz].log10(), log_edges[1:-1])
            hist.index_add_(
                0, feat * (len(HIST_EDGES) - 1) + bins, torch.ones_like(bins, dtype=hist.dtype)
            )
            cut = _Cutter(f, n_seq, seq_len, window, cfg.before, first_seq + s0)
            k = min(cfg.n_top, f.shape[0])
            vals, rows = f.topk(k, dim=0)
            top.merge(vals, vals, *cut.where(rows), cut.windows(rows))
            keys = torch.full_like(f, -torch.inf)
            keys[nz] = torch.rand(int(nz.sum()), generator=gen)
            r = min(cfg.reservoir, f.shape[0])
            kv, rows = keys.topk(r, dim=0)
            sample.merge(kv, f.gather(0, rows), *cut.where(rows), cut.windows(rows))
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
        top=top,
        sample=sample,
        background=background,
        tokens=store.group["tokens"][:],
    )


class _Cutter:
    """Maps rows of a batch of whole sequences to (sequence, position, window)."""

    def __init__(
        self, f: Tensor, n_seq: int, seq_len: int, window: int, before: int, first_seq: int
    ) -> None:
        self.f, self.seq_len, self.window, self.before, self.first_seq = (
            f,
            seq_len,
            window,
            before,
            first_seq,
        )

    def where(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        seq, pos = rows // self.seq_len, rows % self.seq_len
        start = (pos - self.before).clamp(0, self.seq_len - self.window)
        return seq + self.first_seq, pos, start

    def windows(self, rows: Tensor) -> Tensor:
        """Activations of each row's own latent over its window: `[k, d_sae, window]`."""
        seq, pos = rows // self.seq_len, rows % self.seq_len
        start = (pos - self.before).clamp(0, self.seq_len - self.window)
        win_rows = (seq * self.seq_len + start).unsqueeze(-1) + torch.arange(self.window)
        d_sae = self.f.shape[1]
        latent = torch.arange(d_sae).view(1, d_sae, 1)
        return self.f.reshape(-1)[win_rows * d_sae + latent]

    def all_latent_windows(self, rows: Tensor) -> Tensor:
        """Activations of every latent over each row's window: `[n, d_sae, window]`."""
        seq, pos = rows // self.seq_len, rows % self.seq_len
        start = (pos - self.before).clamp(0, self.seq_len - self.window)
        win_rows = (seq * self.seq_len + start).unsqueeze(-1) + torch.arange(self.window)
        return self.f[win_rows].permute(0, 2, 1)


def _sample_positions(background: dict, mask: Tensor, cut: _Cutter, gen: torch.Generator) -> None:
    """Keep a uniform sample of eligible positions (bottom-k of random keys) with all latents' windows."""
    keys = torch.where(mask, torch.rand(mask.shape, generator=gen), torch.tensor(-torch.inf))
    n = min(len(background["score"]), len(keys))
    kv, rows = keys.topk(n)
    seq, pos, start = cut.where(rows)
    merged = torch.cat([background["score"], kv])
    best = merged.topk(len(background["score"])).indices
    background["score"] = merged[best]
    for name, new in (
        ("seq", seq),
        ("pos", pos),
        ("start", start),
        ("acts", cut.all_latent_windows(rows)),
    ):
        background[name] = torch.cat([background[name], new])[best]
