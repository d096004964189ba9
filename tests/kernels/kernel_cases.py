"""Checks shared by the torch-path tests and the Triton interpreter run (`triton_check.py`).

Every check draws fresh random inputs (a new seed each call, printed on failure), runs the op
under test and a dense float64 reference on the same (dtype-rounded) inputs, and compares the
forward result and every gradient.

Tolerances, relative to the largest reference magnitude of each compared tensor:
- float32: 1e-5 (sums of at most a few hundred products, accumulated in fp32).
- bfloat16: 1.6e-2 = 4 units of bf16's 2^-8 relative spacing; inputs are rounded to bf16 before
  the reference sees them, so what remains is fp32 accumulation plus the rounding of the
  result (and, for chained ops, of intermediate bf16 tensors) to 8 mantissa bits.
"""

from __future__ import annotations

import os

import torch

from saelab import kernels
from saelab.kernels.reference import dense_decode, dense_preacts

TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float64: 1e-10}


def new_seed() -> int:
    return int.from_bytes(os.urandom(6), "little")


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, tol: float, seed: int) -> None:
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if not ref.numel():
        return
    scale = max(ref.double().abs().max().item(), 1e-6)
    err = (got.double() - ref.double()).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:g} x {scale:.3g} (seed {seed})"


def random_idx(n: int, k: int, d_sae: int, g: torch.Generator) -> torch.Tensor:
    """Distinct latents per row (as every selection returns)."""
    return torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)])


def randn(*shape: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def leaf(t: torch.Tensor, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    return t.detach().to(device, dtype).clone().requires_grad_()


def check_decode(
    n: int,
    k: int,
    d: int,
    d_sae: int,
    dtype: torch.dtype = torch.float32,
    empty_rows: tuple[int, ...] = (),
    padded: bool = False,
    bias: bool = True,
    strided: bool = False,
    device: str = "cpu",
) -> None:
    """`sparse_decode` forward and grads (vals, W_dec, b_dec) against the dense reference.

    empty_rows: rows with no active latent (every slot padded: idx 0, vals 0); padded: a random
    half of the other slots padded too (variable k); strided: non-contiguous idx, vals, W_dec
    and incoming gradient."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    idx = random_idx(n, k, d_sae, g)
    vals = randn(n, k, g=g)
    if padded:
        pad = torch.rand(n, k, generator=g) < 0.5
        idx[pad], vals[pad] = 0, 0.0
    for r in empty_rows:
        idx[r], vals[r] = 0, 0.0
    W = randn(d_sae, d, g=g, scale=d**-0.5)
    b = randn(d, g=g) if bias else None
    grad = randn(n, d, g=g)
    if strided:
        idx = idx.t().contiguous().t()
        vals = vals.t().contiguous().t()
        W = torch.cat([W, W], 1)[:, ::2]
        grad = torch.cat([grad, grad], 1)[:, 1::2]
    assert not strided or not (idx.is_contiguous() or W.is_contiguous())

    v, w = leaf(vals, dtype, device), leaf(W, dtype, device)
    c = leaf(b, dtype, device) if bias else None
    out = kernels.sparse_decode(idx.to(device), v, w, c)
    out.backward(grad.to(device, dtype))
    ours = [t.detach().cpu() if t is not None else None for t in (out, v.grad, w.grad)]
    ours.append(c.grad.cpu() if bias else None)

    v2, w2 = leaf(vals, dtype).double(), leaf(W, dtype).double()
    v2, w2 = leaf(v2, torch.float64), leaf(w2, torch.float64)
    c2 = leaf(leaf(b, dtype), torch.float64) if bias else None
    ref = dense_decode(idx, v2, w2, c2)
    ref.backward(grad.to(dtype).double())
    refs = (ref.detach(), v2.grad, w2.grad, c2.grad if bias else None)

    tol, tag = TOL[dtype], f"decode n{n} k{k} d{d} d_sae{d_sae} {dtype} {device}"
    for name, a, r in zip(("out", "grad vals", "grad W_dec", "grad b_dec"), ours, refs):
        if r is not None:
            assert a.dtype == dtype, f"{tag} {name}: dtype {a.dtype}"
            assert_close(f"{tag} {name}", a, r, tol, seed)
    # latents nobody selected (with a non-zero value) get exactly zero gradient
    used = torch.zeros(d_sae, dtype=torch.bool)
    used[idx[vals != 0]] = True
    assert (ours[2][~used] == 0).all(), f"{tag}: gradient on unselected rows (seed {seed})"
    for r in empty_rows:
        expect = b.to(dtype)[None] if bias else torch.zeros(1, d, dtype=dtype)
        assert torch.equal(ours[0][r : r + 1], expect), f"{tag}: an empty row is not b_dec"


def check_gather(
    n: int,
    k: int,
    d: int,
    d_sae: int,
    dtype: torch.dtype = torch.float32,
    layout: str = "rows",
    bias: bool = True,
    use_pre: bool = False,
    strided_x: bool = False,
    shift: bool = False,
    device: str = "cpu",
) -> None:
    """`gather_preacts` forward and grads (x, W_enc, b_enc, and shift when given) against the
    dense reference.

    layout "rows": W_enc passed as the transpose view of a contiguous [d_sae, d_in] parameter
    (how saelab stores it); "cols": a contiguous [d_in, d_sae] W_enc."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    idx = random_idx(n, k, d_sae, g)
    x = randn(n, d, g=g)
    enc = randn(d_sae, d, g=g, scale=d**-0.5)
    b = randn(d_sae, g=g) if bias else None
    s = randn(d, g=g) if shift else None
    grad = randn(n, k, g=g)

    def run(dt: torch.dtype, dev: str, **kw):
        # inputs rounded to the tested dtype first, so the reference sees the same numbers
        if strided_x:  # every other row of a taller tensor
            base = leaf(torch.cat([x, x], 0).to(dtype), dt, dev)
            xx = base[::2]
        else:
            base = xx = leaf(x.to(dtype), dt, dev)
        param = leaf(leaf(enc if layout == "rows" else enc.t().contiguous(), dtype), dt, dev)
        W_enc = param.t() if layout == "rows" else param
        bb = leaf(leaf(b, dtype), dt, dev) if bias else None
        ss = leaf(leaf(s, dtype), dt, dev) if shift else None
        fn = kernels.gather_preacts if dt != torch.float64 else dense_preacts
        out = fn(xx, W_enc, bb, idx.to(dev), shift=ss, **kw)
        out.backward(grad.to(dtype).to(dev, dt))
        assert param.grad.shape == param.shape
        x_grad = base.grad[::2] if strided_x else base.grad
        return [
            t.cpu() if t is not None else None
            for t in (
                out.detach(),
                x_grad,
                param.grad,
                bb.grad if bias else None,
                ss.grad if shift else None,
            )
        ]

    kw = {}
    if use_pre:
        with torch.no_grad():
            xe, ee = x.to(device, dtype), enc.to(device, dtype)
            if shift:
                xe = xe - s.to(device, dtype)
            kw["pre"] = xe @ ee.t() + (b.to(device, dtype) if bias else 0)
    ours = run(dtype, device, **kw)
    ref = run(torch.float64, "cpu")
    tol, tag = TOL[dtype], f"gather n{n} k{k} d{d} d_sae{d_sae} {dtype} {layout} {device}"
    names = ("out", "grad x", "grad W_enc", "grad b_enc", "grad shift")
    for name, a, r in zip(names, ours, ref):
        if r is not None:
            assert a.dtype == dtype, f"{tag} {name} dtype {a.dtype}"
            assert_close(f"{tag} {name}", a, r, tol, seed)
    grad_rows = ours[2] if layout == "rows" else ours[2].t()
    used = torch.zeros(d_sae, dtype=torch.bool)
    used[idx.reshape(-1)] = True
    assert (grad_rows[~used] == 0).all(), f"{tag}: encoder gradient off the selected latents"


def check_jumprelu_pipeline(n: int, d: int, d_sae: int, dtype: torch.dtype = torch.float32):
    """Variable k end to end: threshold selection (padded), gather * mask, decode, MSE,
    backward, against the same JumpReLU forward done densely in float64."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    x = randn(n, d, g=g)
    enc = randn(d_sae, d, g=g, scale=d**-0.5)
    b_enc = randn(d_sae, g=g, scale=0.1)
    W = randn(d_sae, d, g=g, scale=d**-0.5)
    b_dec = randn(d, g=g, scale=0.1)
    theta = torch.rand(d_sae, generator=g, dtype=torch.float64) * 0.5 + 0.5
    x[0] = b_dec  # pre-activations of row 0 are b_enc, far below every θ: no active latent

    def params(dt):
        return [leaf(t, dt) for t in (enc, b_enc, W, b_dec)]

    e, be, w, bd = params(dtype)
    xs = (x.to(dtype) - bd).detach()
    with torch.no_grad():
        pre = torch.addmm(be, xs, e.t())
    idx, mask = kernels.threshold_select(pre, theta.to(dtype))
    assert not mask[0].any(), "row 0 should have no active latent"
    vals = kernels.gather_preacts(xs, e.t(), be, idx, pre=pre) * mask
    out = kernels.sparse_decode(idx, vals, w, bd)
    (out.float() - x.to(dtype).float()).pow(2).sum().backward()

    e2, be2, w2, bd2 = params(torch.float64)
    xs2 = xs.double()
    pre2 = xs2 @ e2.t() + be2
    # the same selection (rounding may move a value across θ in bf16; selection has own tests)
    active = torch.zeros(n, d_sae, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(idx)
    active[rows[mask], idx[mask]] = True
    assert torch.equal(active, pre > theta.to(dtype))
    f = pre2 * active
    (f @ w2 + bd2 - x.to(dtype).double()).pow(2).sum().backward()
    # bf16 chains several rounded tensors here (pre, vals, out): allow 2x
    tol = TOL[dtype] * (2 if dtype == torch.bfloat16 else 1)
    for name, a, r in zip(("W_enc", "b_enc", "W_dec", "b_dec"), (e, be, w, bd), (e2, be2, w2, bd2)):
        assert_close(f"jumprelu {dtype} grad {name}", a.grad, r.grad, tol, seed)
