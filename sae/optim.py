"""Optimiser construction and the step-dependent schedules (LR, sparsity coefficient)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

OPTIMIZERS = ("adam", "schedule_free_adam")
"""The optimisers `TrainConfig.optimizer` chooses from."""


def build_optimizer(
    module: nn.Module, lr: float, betas: tuple[float, float], eps: float, name: str = "adam"
) -> torch.optim.Optimizer:
    """The optimiser over all parameters, float32 state (JumpReLU's θ included): torch's
    fused Adam, or schedule-free AdamW (the `schedulefree` package, no weight decay) left in
    train mode; its parameters then hold the `y` sequence it takes gradients at."""
    params = [p for p in module.parameters() if p.requires_grad]
    if name == "schedule_free_adam":
        from schedulefree import AdamWScheduleFree

        opt = AdamWScheduleFree(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0)
        opt.train()
        return opt
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


@torch.no_grad()
def eval_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Tensor] | None:
    """The weights to evaluate and save, as a state dict, when they differ from the trained
    parameters: schedule-free's averaged `x` = y + (1 - 1/β1)(z − y), computed out of place
    (what its `eval()` would write into the parameters) so training continues untouched.
    None for an optimiser whose parameters are the weights (Adam)."""
    if not any("z" in s for s in optimizer.state.values()):
        return None
    beta1 = optimizer.param_groups[0]["betas"][0]
    params = dict(module.named_parameters())
    out = {}
    for name, value in module.state_dict().items():
        z = optimizer.state.get(params[name], {}).get("z") if name in params else None
        out[name] = value.clone() if z is None else torch.lerp(value, z, 1 - 1 / beta1)
    return out


def warmup_steps(total_steps: int, requested: int | None, fraction: float = 0.05) -> int:
    """LR warm-up length: as requested, else min(1000, `fraction` of the run)."""
    if requested is not None:
        return max(0, requested)
    return min(1000, int(total_steps * fraction))


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


class L0Controller:
    """Steers a sparsity coefficient so that L0 settles at a target (the target-L0 mode).

    The coefficient is `base · exp(log_scale)`; after each step `log_scale` moves by
    `gain · log(L0 / target)` (an integral controller in log space: too many active latents
    raise the coefficient, too few lower it, by the same factor for the same ratio). The
    controller replaces the sparsity warm-up: its scale starts at 1 and ramps itself. Its
    state is part of the training state, so a resumed run continues bit for bit.
    """

    PROPORTIONAL = 1.0
    """Weight of the latest log-ratio itself (the proportional term): the coefficient reacts at
    once, so the integral needs less wind-up."""
    LIMIT = 30.0
    """Bound on |log_scale| (a factor of ~1e13): keeps a hopeless target from overflowing."""

    def __init__(self, target: float, gain: float) -> None:
        if target <= 0:
            raise ValueError(f"target L0 must be positive, got {target}")
        self.target, self.gain = float(target), float(gain)
        self.log_scale = 0.0
        self.error = 0.0

    def scale(self) -> float:
        """The current multiplier of the configured coefficient."""
        return math.exp(self.log_scale + self.PROPORTIONAL * self.error)

    def update(self, l0: float) -> None:
        """Move the coefficient after a step whose mean L0 per token was `l0`."""
        self.error = math.log(max(l0, 1e-3) / self.target)
        integral = self.log_scale + self.gain * self.error
        self.log_scale = min(self.LIMIT, max(-self.LIMIT, integral))

    def state_dict(self) -> dict[str, float]:
        return {
            "target": self.target,
            "gain": self.gain,
            "log_scale": self.log_scale,
            "error": self.error,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.log_scale, self.error = float(state["log_scale"]), float(state["error"])
