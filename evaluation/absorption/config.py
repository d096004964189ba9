"""Settings of the first-letter absorption eval."""

from __future__ import annotations

from dataclasses import dataclass

from saelab.base.config import check_fields
from saelab.base.errors import UserError


@dataclass
class AbsorptionConfig:
    """The first-letter absorption rule and its data."""

    k_main: int = 1
    """Main latents per letter (k of the k-sparse probe that picks them)."""
    cos_threshold: float = 0.025
    """Minimum cosine between an absorbing latent's decoder row and the probe direction."""
    min_share: float = 0.4
    """Minimum share of the activation's projection on the probe the absorber must carry."""
    min_examples: int = 10
    """Letters with fewer scored (correctly probed test) tokens are reported as insufficient."""
    max_per_word: int = 4
    """Occurrences kept per word (the first ones in store order), so frequent words do not dominate."""
    max_tokens: int | None = 50_000
    """Cap on word tokens read from a store (None: all)."""
    test_fraction: float = 0.3
    """Fraction of the distinct words held out for testing."""
    seed: int = 0
    """Seed of the word split."""
    C: float = 1.0
    """Inverse L2 strength of the letter probes (on standardised activations)."""
    max_iter: int = 1000
    """Iteration cap of the probe solver."""
    batch_size: int = 4096
    """Rows per SAE encoding batch."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.k_main < 1 or self.min_examples < 1 or self.max_per_word < 1:
            raise UserError("k_main, min_examples and max_per_word must be >= 1")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 <= self.min_share <= 1:
            raise UserError(f"min_share must be in [0, 1], got {self.min_share}")
