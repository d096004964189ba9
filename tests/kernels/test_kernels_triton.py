"""The Triton kernels on CPU under triton's interpreter (`TRITON_INTERPRET=1`).

The variable is read when triton is imported, so the checks run in a fresh process
(`triton_check.py`), with the same cases and tolerances as the torch path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("SAELAB_DISABLE_TRITON", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1])])
    out = subprocess.run(
        [sys.executable, str(HERE / "triton_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "triton interpreter: all checks passed" in out.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_kernels_on_cuda(dtype):
    """The compiled kernels on a GPU (`pytest -m gpu`), at sizes near the real ones."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton")
    from kernel_cases import check_decode, check_gather

    from saelab import kernels

    assert kernels.backend("cuda") == "triton"
    dt = getattr(torch, dtype)
    check_decode(n=1000, k=64, d=2304, d_sae=4096, dtype=dt, empty_rows=(3,), device="cuda")
    check_decode(n=333, k=40, d=700, d_sae=512, dtype=dt, padded=True, device="cuda")
    check_gather(n=1000, k=64, d=2304, d_sae=4096, dtype=dt, device="cuda")
    check_gather(n=333, k=40, d=700, d_sae=512, dtype=dt, layout="cols", device="cuda")
