"""Run by test_kernels.py with TRITON_INTERPRET=1: Triton kernels against float64 references.

Exits non-zero on the first mismatch. Under the interpreter CPU tensors dispatch to Triton.
"""

from __future__ import annotations

import os
import sys

import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import kernels  # noqa: E402
from kernels import triton_ops  # noqa: E402
from kernels.reference import dense_decode, dense_preacts  # noqa: E402


def check(name, got, ref, tol):
    err = (got.double() - ref.double()).abs().max().item() if got.numel() else 0.0
    scale = max(1.0, ref.double().abs().max().item() if ref.numel() else 1.0)
    if err > tol * scale:
        print(f"FAIL {name}: max error {err:.3g}")
        sys.exit(1)
    print(f"ok {name} ({err:.2g})")


def main() -> None:
    assert kernels.backend("cpu") == "triton"
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for n, k, d, d_sae, dtype, tol in [
        (13, 5, 70, 40, torch.float32, 1e-5),
        (9, 1, 33, 17, torch.float32, 1e-5),
        (5, 12, 20, 12, torch.float32, 1e-5),
        (7, 4, 64, 30, torch.bfloat16, 3e-2),
    ]:
        tag = f"n{n} k{k} d{d} dsae{d_sae} {dtype}"
        idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)])
        vals = torch.randn(n, k, generator=g)
        idx[1], vals[1] = 0, 0.0  # padded row
        W = torch.randn(d_sae, d, generator=g)
        b = torch.randn(d, generator=g)
        grad = torch.randn(n, d, generator=g)
        v, w, c = (t.to(dtype).clone().requires_grad_() for t in (vals, W, b))
        out = kernels.sparse_decode(idx, v, w, c)
        out.backward(grad.to(dtype))
        v2, w2, c2 = (t.detach().to(dtype).double().requires_grad_() for t in (vals, W, b))
        ref = dense_decode(idx, v2, w2, c2)
        ref.backward(grad.to(dtype).double())
        for name, a, r in (
            ("decode", out, ref),
            ("grad vals", v.grad, v2.grad),
            ("grad W_dec", w.grad, w2.grad),
            ("grad b_dec", c.grad, c2.grad),
        ):
            check(f"{name} {tag}", a, r.detach(), tol)
        x = torch.randn(n, d, generator=g).requires_grad_()
        enc = torch.randn(d_sae, d, generator=g).requires_grad_()
        be = torch.randn(d_sae, generator=g).requires_grad_()
        pre = kernels.gather_preacts(x, enc.t(), be, idx)
        gp = torch.randn(n, k, generator=g)
        pre.backward(gp)
        x2, e2, b2 = (t.detach().double().requires_grad_() for t in (x, enc, be))
        pref = dense_preacts(x2, e2.t(), b2, idx)
        pref.backward(gp.double())
        for name, a, r in (
            ("preacts", pre, pref),
            ("grad x", x.grad, x2.grad),
            ("grad W_enc", enc.grad, e2.grad),
            ("grad b_enc", be.grad, b2.grad),
        ):
            check(f"{name} {tag}", a, r.detach(), 1e-5)
    # the primitives directly, against the torch ones, with an unused latent range
    idx = torch.randint(0, 8, (11, 3), generator=g)
    vals, a = torch.randn(11, 3, generator=g), torch.randn(11, 50, generator=g)
    from kernels import torch_ops

    check(
        "scatter_rows unused rows",
        triton_ops.scatter_rows(idx, vals, a, 20),
        torch_ops.scatter_rows(idx, vals, a, 20),
        1e-5,
    )
    print("triton interpreter: all checks passed")


if __name__ == "__main__":
    main()
