"""Settings of k-sparse probing: how any probe is fit (`ProbingConfig`), and what the probing eval
reads from the store (`ProbingSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.evaluation.spec import Split

POOLINGS = ("mean", "token")
SPLIT_UNITS = ("sequence", "document")


@dataclass
class ProbingConfig:
    """How to probe."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    """Numbers of latents of the sparse probes (those above the SAE's width are skipped)."""
    test_fraction: float = 0.3
    """Fraction of the groups (sequences or documents for a store) of each class held out."""
    seed: int = 0
    """Seed of the split, the class balancing and the token sampling."""
    balance: bool = True
    """Down-sample the larger class in each split so chance accuracy is 0.5."""
    C: float = 1.0
    """Inverse L2 strength of the logistic regressions (on standardised features)."""
    max_iter: int = 1000
    """Iteration cap of the regression solver (L-BFGS)."""
    split_by: Literal["sequence", "document"] = "sequence"
    """For a store: what the split keeps on one side, "sequence" or "document"."""
    pooling: Literal["mean", "token"] = "mean"
    """For a store: "mean" (one example per sequence) or "token" (one per sampled token)."""
    max_tokens_per_sequence: int = 4
    """With token pooling: eligible tokens sampled per sequence (bounds memory, limits correlation)."""
    batch_size: int = 4096
    """Rows per SAE encoding batch."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise UserError(f"ks must be positive integers, got {self.ks}")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.pooling not in POOLINGS:
            raise UserError(f"unknown pooling {self.pooling!r}: choose {', '.join(POOLINGS)}")
        if self.split_by not in SPLIT_UNITS:
            raise UserError(f"unknown split_by {self.split_by!r}: choose {', '.join(SPLIT_UNITS)}")
        if self.max_tokens_per_sequence < 1 or self.C <= 0:
            raise UserError("max_tokens_per_sequence must be >= 1 and C > 0")


@dataclass
class ProbingSettings(ProbingConfig):
    """The probing eval's settings: how probes are fit, and which corpus label of which store
    split they classify."""

    split: Split = "all"
    """Store split whose sequences the eval splits into its own train and test sets ("test"
    reads a tenth of the store: faster, noisier)."""
    column: str = field(default="source", metadata={"flag": "--probe-column"})
    """Label column of the store's corpus to classify (harvest any labelled dataset or file,
    then probe its column)."""
    positive: str | None = field(default=None, metadata={"flag": "--probe-positive"})
    """Positive class of that column (one vs rest); None: the column must have two values."""
