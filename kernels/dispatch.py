"""The one place that picks an implementation: Triton for CUDA tensors, torch otherwise.

Set `SAELAB_DISABLE_TRITON=1` to force the torch path everywhere (it gives the same numbers).
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def backend(device: torch.device | str) -> str:
    """`"triton"` or `"torch"` for tensors on `device`."""
    if os.environ.get("SAELAB_DISABLE_TRITON", "") not in ("", "0"):
        return "torch"
    device = torch.device(device)
    if not triton_available():
        return "torch"
    if device.type == "cuda" or (_interpreting() and device.type == "cpu"):
        return "triton"
    return "torch"


def ops_for(device: torch.device | str):
    """The primitive-op module for `device` (see `torch_ops` for the three primitives)."""
    if backend(device) == "triton":
        from kernels import triton_ops

        return triton_ops
    from kernels import torch_ops

    return torch_ops
