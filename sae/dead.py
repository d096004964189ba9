"""Dead-latent tracking: tokens since each latent last fired."""

from __future__ import annotations

import torch
from torch import Tensor


class DeadLatentTracker:
    """A latent is dead once it has not fired for `window` tokens."""

    def __init__(self, d_sae: int, window: int, device: torch.device | str = "cpu") -> None:
        self.window = window
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, fire_counts: Tensor, n_tokens: int) -> None:
        """Record a batch: `fire_counts [d_sae]` (rows each latent fired on), `n_tokens`."""
        self.since_fired += n_tokens
        self.since_fired[fire_counts > 0] = 0

    def dead_mask(self) -> Tensor:
        return self.since_fired >= self.window

    def dead_fraction(self) -> float:
        return float(self.dead_mask().float().mean())

    def state_dict(self) -> dict:
        return {"window": self.window, "since_fired": self.since_fired.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.window = state["window"]
        self.since_fired.copy_(state["since_fired"])
