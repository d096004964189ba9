"""Input checks shared by the public ops: each failure is a one-line ValueError."""

from __future__ import annotations

import torch
from torch import Tensor


def matrix(t: Tensor, name: str, op: str, floating: bool = True) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be a 2-D tensor, got {shape}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be floating point, got {t.dtype}")


def vector(t: Tensor | None, size: int, name: str, op: str) -> None:
    if t is not None and (not isinstance(t, Tensor) or tuple(t.shape) != (size,)):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must have shape ({size},), got {shape}")


def indices(idx: Tensor, n: int, n_latents: int, op: str) -> None:
    """`idx` is an integer `[n, k]` tensor of latents in `0..n_latents-1`."""
    matrix(idx, "idx", op, floating=False)
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{op}: idx must be an integer tensor, got {idx.dtype}")
    if idx.shape[0] != n:
        raise ValueError(f"{op}: idx must be [N, k] with N={n}, got {tuple(idx.shape)}")
    if idx.numel():
        # One host sync on CUDA; an out-of-range index would otherwise read stray memory.
        lo, hi = torch.aminmax(idx)
        if int(lo) < 0 or int(hi) >= n_latents:
            raise ValueError(f"{op}: idx holds latents outside 0..{n_latents - 1}")


def same_device(op: str, **tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"{op}: tensors on different devices ({listed})")
