"""Run by `test_kernels_triton.py` as `TRITON_INTERPRET=1 python triton_check.py`: the Triton
kernels, executed on CPU tensors by triton's interpreter, through the same checks as the torch
path (`kernel_cases.py`). The variable must be set before triton is imported, hence a separate
process. Shapes are tiny (the interpreter runs each program in Python) but chosen to cross
every block boundary: k > BLOCK_K, d > BLOCK_D and not a multiple of it, a latent's segment
longer than BLOCK_E, N not a multiple of anything, k = 1, k = d_sae.

Exits non-zero (an AssertionError naming the case and its seed) on the first mismatch.
"""

from __future__ import annotations

import os
import sys

import torch
from kernel_cases import check_decode, check_gather, check_jumprelu_pipeline

from saelab import kernels
from saelab.kernels import torch_ops, triton_ops
from saelab.kernels.dispatch import ops_for


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    assert kernels.backend("cpu") == "triton" and ops_for("cpu") is triton_ops
    assert triton_ops.BLOCK_K < 20 and triton_ops.BLOCK_D < 300 and triton_ops.BLOCK_E < 40
    f32, bf16 = torch.float32, torch.bfloat16
    decode_cases = [
        dict(n=13, k=20, d=300, d_sae=40, empty_rows=(1,)),  # k-blocks and d-blocks, tails
        dict(n=40, k=3, d=20, d_sae=3),  # k = d_sae; segments of 40 entries > BLOCK_E
        dict(n=9, k=1, d=33, d_sae=17),  # k = 1
        dict(n=11, k=6, d=24, d_sae=30, padded=True, empty_rows=(0,)),  # variable k
        dict(n=7, k=5, d=40, d_sae=25, strided=True, bias=False),  # non-contiguous inputs
        dict(n=7, k=4, d=64, d_sae=30, dtype=bf16, empty_rows=(2,)),
    ]
    for case in decode_cases:
        check_decode(**case)
        print("ok decode", case, flush=True)
    gather_cases = [
        dict(n=13, k=20, d=300, d_sae=40),
        dict(n=9, k=1, d=33, d_sae=17, use_pre=True),
        dict(n=40, k=3, d=20, d_sae=3, bias=False),
        dict(n=7, k=5, d=40, d_sae=25, layout="cols", strided_x=True),  # strided table, no copy
        dict(n=7, k=4, d=64, d_sae=30, dtype=bf16),
    ]
    for case in gather_cases:
        check_gather(**case)
        print("ok gather", case, flush=True)
    check_jumprelu_pipeline(n=12, d=16, d_sae=24, dtype=f32)
    print("ok jumprelu pipeline", flush=True)
    # the primitives against the torch ones, including zero weights and unused latents
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    idx = torch.randint(0, 8, (11, 3), generator=g)
    vals, a = torch.randn(11, 3, generator=g), torch.randn(11, 150, generator=g)
    vals[vals < -0.5] = 0.0
    got, want = triton_ops.scatter_rows(idx, vals, a, 20), torch_ops.scatter_rows(idx, vals, a, 20)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got[8:] == 0).all()
    print("triton interpreter: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
