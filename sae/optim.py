"""Optimiser construction and the step-dependent schedules (LR, sparsity coefficient)."""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(
    module: nn.Module, lr: float, betas: tuple[float, float], eps: float
) -> torch.optim.Adam:
    """Adam over all parameters, float32 state (JumpReLU's θ included)."""
    params = [p for p in module.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def warmup_steps(total_steps: int, requested: int | None) -> int:
    """LR warm-up length: as requested, else min(1000, 5% of the run)."""
    if requested is not None:
        return max(0, requested)
    return min(1000, total_steps // 20)


def lr_multiplier(step: int, total_steps: int, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last `decay_fraction`.

    `step` counts from 0 for the first update.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay_steps = int(total_steps * decay_fraction)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0


def sparsity_multiplier(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Sparsity-coefficient warm-up: linear from ~0 to 1 over the first fraction of steps."""
    warm = int(total_steps * warmup_fraction)
    if warm <= 0 or step >= warm:
        return 1.0
    return (step + 1) / warm


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
