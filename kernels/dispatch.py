"""The one place that picks an implementation: Triton for CUDA tensors, torch otherwise.

- `SAELAB_DISABLE_TRITON=1` forces the torch path everywhere (same numbers up to rounding).
- Triton is imported only when a CUDA tensor (or the interpreter) asks for it, so the package
  imports and runs on machines without triton.
- `SAELAB_DISABLE_FUSED=1` turns off the fused CPU matmul + top-k (`kernels/fused.py`).
- Under `TRITON_INTERPRET=1` (read by triton at import) CPU tensors go to the Triton kernels
  too: that is how the test suite runs them without a GPU. Slow; for checking only.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

DISABLE_ENV = "SAELAB_DISABLE_TRITON"
DISABLE_FUSED_ENV = "SAELAB_DISABLE_FUSED"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def fused_enabled() -> bool:
    """Whether the fused matmul + top-k may run (`SAELAB_DISABLE_FUSED` unset)."""
    return not _flag(DISABLE_FUSED_ENV)


def backend(device: torch.device | str) -> str:
    """`"triton"` or `"torch"`: the implementation the ops use for tensors on `device`."""
    if _flag(DISABLE_ENV):
        return "torch"
    device = torch.device(device)
    wants_triton = device.type == "cuda" or (device.type == "cpu" and _flag("TRITON_INTERPRET"))
    return "triton" if wants_triton and triton_available() else "torch"


def ops_for(device: torch.device | str) -> ModuleType:
    """The primitive-op module for `device` (see `torch_ops` for the three primitives)."""
    if backend(device) == "triton":
        from saelab.kernels import triton_ops

        return triton_ops
    from saelab.kernels import torch_ops

    return torch_ops
