"""Every kernel op, forward and every gradient, against a dense float64 reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels
from kernels import torch_ops
from kernels.reference import dense_decode, dense_preacts

# fp32 results are compared to float64 references with rtol/atol 1e-4 (sums of up to a few
# hundred products); bf16 inputs are rounded to 8 bits of mantissa, so 3e-2 relative.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def gen():
    return torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**62))


def case(n, k, d, d_sae, dtype=torch.float32, g=None, pad_rows=()):
    g = g or gen()
    idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)])
    vals = torch.randn(n, k, generator=g)
    for r in pad_rows:  # a row with no active latent: all slots padded (idx 0, vals 0)
        idx[r], vals[r] = 0, 0.0
    W = torch.randn(d_sae, d, generator=g) / d**0.5
    b = torch.randn(d, generator=g)
    return idx, vals.to(dtype), W.to(dtype), b.to(dtype)


def decode_grads(fn, idx, vals, W, b, grad_out):
    vals, W, b = (t.detach().clone().requires_grad_() for t in (vals, W, b))
    out = fn(idx, vals, W, b)
    out.backward(grad_out)
    return out.detach(), vals.grad, W.grad, b.grad


SHAPES = [
    dict(n=37, k=8, d=24, d_sae=96),  # N not a multiple of any block size
    dict(n=16, k=1, d=24, d_sae=50),  # k = 1
    dict(n=9, k=30, d=20, d_sae=30),  # k = d_sae
    dict(n=6, k=4, d=2304, d_sae=64),  # large d_in
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_decode_forward_and_grads(shape, dtype):
    idx, vals, W, b = case(**shape, dtype=dtype, pad_rows=(2,))
    grad_out = torch.randn(shape["n"], shape["d"], generator=gen()).to(dtype)
    ours = decode_grads(kernels.sparse_decode, idx, vals, W, b, grad_out)
    ref = decode_grads(dense_decode, idx, vals.double(), W.double(), b.double(), grad_out.double())
    for name, a, r in zip(("out", "vals", "W_dec", "b_dec"), ours, ref):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), r, **TOL[dtype], msg=name)
    # rows never selected get exactly zero gradient; a padded row adds nothing
    unused = torch.ones(shape["d_sae"], dtype=torch.bool)
    unused[idx[vals != 0]] = False
    assert (ours[2][unused] == 0).all()
    torch.testing.assert_close(ours[0][2].double(), b.double(), **TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_gather_preacts_forward_and_grads(shape):
    g = gen()
    n, k, d, d_sae = shape["n"], shape["k"], shape["d"], shape["d_sae"]
    idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)])
    x = torch.randn(n, d, generator=g)
    enc = (
        torch.randn(d_sae, d, generator=g) / d**0.5
    )  # stored [d_sae, d_in], passed as its transpose
    b = torch.randn(d_sae, generator=g)
    grad_out = torch.randn(n, k, generator=g)

    def run(fn, x, enc, b, **kw):
        x, enc, b = (t.detach().clone().requires_grad_() for t in (x, enc, b))
        out = fn(x, enc.t(), b, idx, **kw)
        out.backward(grad_out.to(out.dtype))
        return out.detach(), x.grad, enc.grad, b.grad

    ref = run(dense_preacts, x.double(), enc.double(), b.double())
    with torch.no_grad():
        pre = torch.addmm(b, x, enc.t())
    for kw in ({}, {"pre": pre}):
        ours = run(kernels.gather_preacts, x, enc, b, **kw)
        for name, a, r in zip(("out", "x", "W_enc", "b_enc"), ours, ref):
            torch.testing.assert_close(a.double(), r, **TOL[torch.float32], msg=name)


def test_gradcheck_float64():
    g = gen()
    idx = torch.randint(0, 40, (11, 6), generator=g)  # duplicates within a row allowed
    vals = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(40, 7, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, w, c: kernels.sparse_decode(idx, v, w, c), (vals, W, b)
    )
    x = torch.randn(11, 7, dtype=torch.float64, generator=g, requires_grad=True)
    enc = torch.randn(40, 7, dtype=torch.float64, generator=g, requires_grad=True)
    be = torch.randn(40, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, e, c: kernels.gather_preacts(a, e.t(), c, idx), (x, enc, be)
    )


def test_non_contiguous_inputs():
    idx, vals, W, b = case(20, 5, 16, 60)
    wide = torch.randn(60, 32, generator=gen())
    W_view = wide[:, ::2]  # strided view
    vals_t = vals.t().contiguous().t()  # non-contiguous [N, k]
    ours = kernels.sparse_decode(idx, vals_t, W_view, b)
    torch.testing.assert_close(
        ours.double(),
        dense_decode(idx, vals.double(), W_view.double(), b.double()),
        **TOL[torch.float32],
    )
    x = torch.randn(40, 16, generator=gen())[::2]  # every other row
    enc = torch.randn(16, 60, generator=gen())  # a contiguous [d_in, d_sae] W_enc works too
    out = kernels.gather_preacts(x, enc, None, idx)
    torch.testing.assert_close(
        out.double(), dense_preacts(x.double(), enc.double(), None, idx), **TOL[torch.float32]
    )


def test_encode_topk_matches_dense():
    g = gen()
    x = torch.randn(33, 20, generator=g, dtype=torch.float64, requires_grad=True)
    enc = torch.randn(80, 20, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(80, generator=g, dtype=torch.float64, requires_grad=True)
    vals, idx = kernels.encode_topk(x, enc.t(), b, 7)
    dense = torch.relu(x @ enc.t() + b)
    ref_vals, ref_idx = dense.topk(7, dim=1)
    assert (idx.sort(1).values == ref_idx.sort(1).values).all()
    torch.testing.assert_close(vals.gather(1, vals.argsort(1, descending=True)), ref_vals)
    (vals.pow(2).sum()).backward()
    x2, enc2, b2 = (t.detach().clone().requires_grad_() for t in (x, enc, b))
    torch.relu(x2 @ enc2.t() + b2).topk(7, dim=1).values.pow(2).sum().backward()
    for a, r in ((x.grad, x2.grad), (enc.grad, enc2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(a, r)


def test_selections():
    g = gen()
    pre = torch.randn(50, 30, generator=g)
    vals, idx = kernels.topk_select(pre, 4)
    assert (idx.sort(1).values == pre.topk(4).indices.sort(1).values).all()
    torch.testing.assert_close(vals, pre.gather(1, idx))
    theta = torch.rand(30, generator=g) + 0.5
    theta[3] = -100  # latent 3 always active
    pre[7] = -1000  # row 7 only has latent 3; make one row empty with a high scalar threshold
    idx, mask = kernels.threshold_select(pre, theta)
    for r in range(50):
        assert set(idx[r][mask[r]].tolist()) == set((pre[r] > theta).nonzero().squeeze(1).tolist())
    assert (idx[~mask] == 0).all() and mask.shape[1] == int((pre > theta).sum(1).max())
    idx, mask = kernels.threshold_select(torch.zeros(4, 6) - 1, 0.0)
    assert idx.shape == (4, 1) and not mask.any()
    with pytest.raises(ValueError, match="k must be in 1..30"):
        kernels.topk_select(pre, 31)


@pytest.mark.parametrize(
    "n, d_sae, k", [(256, 512, 8), (16, 40, 30)]
)  # sampled path, and the fallback
def test_batch_topk_is_exact(n, d_sae, k):
    pre = torch.randn(n, d_sae, generator=gen())
    idx, mask = kernels.batch_topk_select(pre, k)
    chosen = torch.zeros_like(pre, dtype=torch.bool)
    chosen[torch.arange(n)[:, None].expand_as(idx)[mask], idx[mask]] = True
    ref = torch.zeros(n * d_sae, dtype=torch.bool)
    ref[pre.reshape(-1).topk(n * k).indices] = True
    assert torch.equal(chosen, ref.view(n, d_sae))


def test_bad_input_is_a_value_error():
    idx, vals, W, b = case(5, 3, 8, 10)
    with pytest.raises(ValueError, match="outside 0..9"):
        kernels.sparse_decode(idx + 10, vals, W, b)
    with pytest.raises(ValueError, match="differ"):
        kernels.sparse_decode(idx, vals[:, :2], W, b)
    with pytest.raises(ValueError, match="width"):
        kernels.gather_preacts(torch.randn(5, 9), W.t(), None, idx)


def test_dispatch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernels.backend("cpu") == "torch"
    monkeypatch.setenv("SAELAB_DISABLE_TRITON", "1")
    assert kernels.backend("cuda") == "torch"


def test_torch_primitives_handle_duplicates_and_padding():
    """CSR routines with repeated latents in a row (padding repeats idx 0) still sum correctly."""
    idx = torch.tensor([[0, 0, 3], [2, 2, 2]])
    vals = torch.tensor([[1.0, 2.0, 0.5], [1.0, -1.0, 3.0]])
    a = torch.randn(2, 4, generator=gen())
    table = torch.randn(5, 4, generator=gen())
    ref_scatter = torch.zeros(5, 4)
    for n in range(2):
        for j in range(3):
            ref_scatter[idx[n, j]] += vals[n, j] * a[n]
    torch.testing.assert_close(torch_ops.scatter_rows(idx, vals, a, 5), ref_scatter)
    torch.testing.assert_close(
        torch_ops.gather_dot(idx, a, table), torch.einsum("nkd,nd->nk", table[idx], a)
    )


def test_triton_kernels_under_the_interpreter():
    """The Triton kernels, run on CPU by triton's interpreter (a subprocess: the variable must
    be set before triton is imported). Small shapes: the interpreter is slow."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("SAELAB_DISABLE_TRITON", None)
    script = Path(__file__).with_name("triton_check.py")
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "triton interpreter: all checks passed" in out.stdout
