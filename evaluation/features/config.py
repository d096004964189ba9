"""Settings of the features eval: how many examples of each kind to keep per latent, their
window, and which store split is read."""

from __future__ import annotations

from dataclasses import dataclass

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.evaluation.spec import Split


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
    n_nonactivating: int = 12
    """Non-activating examples per latent (from a shared uniform sample of positions): the
    latent is silent at the example token, and windows silent throughout come first (the
    auto-interp scorers' negatives)."""
    token_sample: int = 64
    """Size of that shared sample of positions."""
    window: int = 24
    """Tokens per example window (kept inside the sequence)."""
    before: int = 18
    """Tokens before the example token, when the sequence allows."""
    min_examples: int = 20
    """Latents firing on fewer tokens are flagged `too_few_examples`."""
    seqs_per_batch: int = 32
    """Sequences encoded at once (whole sequences, so windows can be cut from the batch)."""
    seed: int = 0
    """Seed of the reservoir keys."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        counts = {name: getattr(self, name) for name in ("n_top", "reservoir", "n_bands",
                  "per_band", "window", "seqs_per_batch")}  # fmt: skip
        bad = next((k for k, v in counts.items() if v < 1), None)
        if bad:
            raise UserError(f"`{bad}` must be at least 1, got {counts[bad]}")
        rest = ("n_random", "n_nonactivating", "token_sample", "min_examples")
        bad = next((k for k in rest if getattr(self, k) < 0), None)
        if bad:
            raise UserError(f"`{bad}` must be at least 0, got {getattr(self, bad)}")
        if not 0 <= self.before < self.window:
            raise UserError(f"`before` must be in [0, window), got {self.before}")


@dataclass
class FeaturesSettings(FeatureStatsConfig):
    """The features eval's settings: the statistics' settings and the store split."""

    split: Split = "all"
    """Store split the statistics and dashboards read (all: every committed chunk)."""
