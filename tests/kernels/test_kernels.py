"""The torch path of every kernel op, forward and every gradient, against dense float64
references (checks and tolerances in `kernel_cases.py`); selections, dispatch, bad input.

The Triton kernels run the same checks under the interpreter: `test_kernels_triton.py`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_cases import check_decode, check_gather, check_jumprelu_pipeline, new_seed

from saelab import kernels
from saelab.kernels import torch_ops

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    monkeypatch.setenv("SAELAB_DISABLE_TRITON", "1")


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(new_seed())


DTYPES = [torch.float32, torch.bfloat16]
SHAPES = {
    "odd-batch": dict(n=37, k=8, d=24, d_sae=96),  # N not a multiple of any block size
    "k=1": dict(n=16, k=1, d=24, d_sae=50),
    "k=d_sae": dict(n=9, k=30, d=20, d_sae=30),
    "large-d_in": dict(n=6, k=4, d=4096, d_sae=64),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparse_decode(shape, dtype):
    check_decode(**shape, dtype=dtype, empty_rows=(2,))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparse_decode_padded_strided_and_no_bias(dtype):
    check_decode(n=21, k=12, d=40, d_sae=64, dtype=dtype, padded=True, empty_rows=(0, 5))
    check_decode(n=21, k=12, d=40, d_sae=64, dtype=dtype, strided=True, bias=False)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_preacts(shape, dtype):
    check_gather(**shape, dtype=dtype)
    check_gather(**shape, dtype=dtype, use_pre=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_preacts_layouts(dtype):
    """A contiguous [d_in, d_sae] W_enc, a strided x, no bias."""
    check_gather(n=19, k=6, d=33, d_sae=70, dtype=dtype, layout="cols")
    check_gather(n=19, k=6, d=33, d_sae=70, dtype=dtype, strided_x=True, bias=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_preacts_shift(dtype):
    """A subtracted shift (a centring SAE's b_dec): its gradient, and x's, match the dense
    reference, with and without the precomputed pre-activations and the bias."""
    check_gather(n=23, k=7, d=31, d_sae=90, dtype=dtype, shift=True)
    check_gather(n=23, k=7, d=31, d_sae=90, dtype=dtype, shift=True, use_pre=True, bias=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jumprelu_pipeline(dtype):
    check_jumprelu_pipeline(n=40, d=24, d_sae=80, dtype=dtype)


def test_gradcheck_float64():
    g = gen()
    idx = torch.randint(0, 12, (5, 4), generator=g)  # duplicates within a row allowed
    idx[0, 1:] = 0  # padding-like repeats of latent 0

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)

    vals, W, b = rand(5, 4), rand(12, 6), rand(6)
    assert torch.autograd.gradcheck(
        lambda v, w, c: kernels.sparse_decode(idx, v, w, c), (vals, W, b)
    )
    x, enc, be = rand(5, 6), rand(12, 6), rand(12)
    assert torch.autograd.gradcheck(
        lambda a, e, c: kernels.gather_preacts(a, e.t(), c, idx), (x, enc, be)
    )
    enc_cols = rand(6, 12)  # contiguous [d_in, d_sae] layout
    assert torch.autograd.gradcheck(
        lambda a, e: kernels.gather_preacts(a, e, None, idx), (x, enc_cols)
    )


def test_encode_topk_matches_dense_and_keeps_nothing_dense():
    g = gen()
    n, d, d_sae, k = 33, 20, 80, 7
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    enc = torch.randn(d_sae, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(d_sae, generator=g, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.shape) or t, lambda t: t
    ):
        vals, idx = kernels.encode_topk(x, enc.t(), b, k)
    assert all(d_sae not in s or s == (d_sae, d) for s in saved), saved  # no [N, d_sae] kept
    ref_vals, ref_idx = torch.relu(x @ enc.t() + b).topk(k, dim=1)
    assert torch.equal(idx.sort(1).values, ref_idx.sort(1).values)
    torch.testing.assert_close(vals.sort(1, descending=True).values, ref_vals)
    vals.pow(2).sum().backward()
    x2, enc2, b2 = (t.detach().clone().requires_grad_() for t in (x, enc, b))
    torch.relu(x2 @ enc2.t() + b2).topk(k, dim=1).values.pow(2).sum().backward()
    for a, r in ((x.grad, x2.grad), (enc.grad, enc2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(a, r)


def test_incoming_gradient_with_zero_strides():
    """`out.sum().backward()` hands backward an expanded (stride 0) gradient."""
    g = gen()
    idx = torch.randint(0, 30, (10, 4), generator=g)
    vals = torch.randn(10, 4, generator=g, requires_grad=True)
    W = torch.randn(30, 8, generator=g, requires_grad=True)
    kernels.sparse_decode(idx, vals, W).sum().backward()
    torch.testing.assert_close(vals.grad, W.detach().sum(1)[idx])


def test_topk_select():
    pre = torch.randn(50, 30, generator=gen())
    for k in (1, 4, 30):
        vals, idx = kernels.topk_select(pre, k)
        assert torch.equal(idx.sort(1).values, pre.topk(k).indices.sort(1).values)
        assert torch.equal(vals, pre.gather(1, idx))


@pytest.mark.parametrize("values", ["normal", "ties", "nan-and-inf"])
def test_topk_select_chunked_path_is_exact(values):
    """Wide rows take the chunked CPU path; its values equal torch.topk's, row by row, and
    its indices point at them, even with ties, NaN (ranked largest) and -inf rows."""
    from saelab.kernels.select import _chunked_pays

    g = gen()
    pre = torch.randn(300, 1024, generator=g)
    if values == "ties":  # few distinct values: many ties at the k-th place
        pre = (pre * 2).round()
    if values == "nan-and-inf":
        pre[3, 100] = float("nan")
        pre[4] = float("-inf")
        pre[5, :40] = float("inf")
    for k in (1, 5, 8):
        assert _chunked_pays(pre, k)
        vals, idx = kernels.topk_select(pre, k)
        ref = pre.topk(k, dim=1).values
        torch.testing.assert_close(vals.sort(1).values, ref.sort(1).values, equal_nan=True)
        torch.testing.assert_close(vals, pre.gather(1, idx), equal_nan=True)
        assert (idx.sort(1).values.diff(1) > 0).all(), "a latent chosen twice"
    narrow = torch.randn(10, 1000, generator=g)  # not a multiple of the chunk: torch.topk
    assert not _chunked_pays(narrow, 4)
    assert torch.equal(
        kernels.topk_select(narrow, 4)[0].sort(1).values, narrow.topk(4).values.sort(1).values
    )


def test_split_selection_partitions_each_row_in_order():
    g = gen()
    pre = torch.randn(30, 50, generator=g)
    idx, mask = kernels.threshold_select(pre, 0.3)
    first = pre.gather(1, idx) > 1.0
    (a, ma), (b, mb) = kernels.split_selection(idx, mask, first)
    for r in range(30):
        row = idx[r][mask[r]]
        hi = row[pre[r, row] > 1.0]
        assert torch.equal(a[r][ma[r]], hi) and torch.equal(b[r][mb[r]], row[pre[r, row] <= 1.0])
    assert ma.shape[1] == max(1, int(ma.sum(1).max())) and (a[~ma] == 0).all()
    assert (b[~mb] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_decode_probe_is_zero_with_the_decode_gradient(dtype):
    g = gen()
    idx = torch.randint(0, 70, (25, 9), generator=g)
    W = torch.randn(70, 12, generator=g, dtype=torch.float64)
    grad = torch.randn(25, 12, generator=g, dtype=torch.float64)
    vals = torch.zeros(25, 9, dtype=dtype, requires_grad=True)
    w = W.to(dtype).requires_grad_()
    mask = torch.rand(25, 9, generator=g) < 0.7
    mask[3] = False  # a row with nothing kept
    out = kernels.decode_probe(idx, vals, w, mask)
    assert out.dtype == dtype and not out.any()
    out.backward(grad.to(dtype))
    want = (grad @ W.to(dtype).double().t()).gather(1, idx) * mask
    torch.testing.assert_close(vals.grad.double(), want, rtol=1e-5, atol=1e-5)
    assert w.grad is None


def test_threshold_select():
    g = gen()
    pre = torch.randn(50, 30, generator=g)
    theta = torch.rand(30, generator=g) + 0.5
    theta[3] = -100  # latent 3 always active
    pre[7] = -1000  # so row 7 has latent 3 only
    for threshold in (theta, 0.8, torch.tensor(0.8)):
        idx, mask = kernels.threshold_select(pre, threshold)
        active = pre > threshold
        assert mask.shape == idx.shape == (50, int(active.sum(1).max()))
        assert (idx[~mask] == 0).all() and torch.equal(mask.sum(1), active.sum(1))
        for r in range(50):
            want = active[r].nonzero().squeeze(1)
            assert torch.equal(idx[r][mask[r]], want)  # increasing latent order
    idx, mask = kernels.threshold_select(torch.full((4, 6), -1.0), 0.0)  # nothing active
    assert idx.shape == (4, 1) and not mask.any() and (idx == 0).all()


@pytest.mark.parametrize(
    "n, d_sae, k",
    [(256, 512, 8), (16, 40, 30), (64, 100, 2.5)],
    ids=["sampled-threshold", "fallback", "fractional-k"],
)
def test_batch_topk_is_exact(n, d_sae, k):
    pre = torch.randn(n, d_sae, generator=gen())
    idx, mask = kernels.batch_topk_select(pre, k)
    chosen = torch.zeros_like(pre, dtype=torch.bool)
    chosen[torch.arange(n)[:, None].expand_as(idx)[mask], idx[mask]] = True
    ref = torch.zeros(n * d_sae, dtype=torch.bool)
    ref[pre.reshape(-1).topk(round(n * k)).indices] = True
    assert torch.equal(chosen, ref.view(n, d_sae))
    assert (idx[~mask] == 0).all() and mask.shape[1] == int(chosen.sum(1).max())


def test_bad_input_is_a_value_error():
    g = gen()
    idx = torch.randint(0, 10, (5, 3), generator=g)
    vals, W, b = torch.randn(5, 3), torch.randn(10, 8), torch.randn(8)
    x, enc = torch.randn(5, 8), torch.randn(10, 8)
    bad = [
        (lambda: kernels.sparse_decode(idx + 10, vals, W, b), "outside 0..9"),
        (lambda: kernels.sparse_decode(idx - 10, vals, W, b), "outside 0..9"),
        (lambda: kernels.sparse_decode(idx, vals[:, :2], W, b), "differ"),
        (lambda: kernels.sparse_decode(idx.float(), vals, W, b), "integer"),
        (lambda: kernels.sparse_decode(idx, vals, W, b[:3]), "b_dec must have shape"),
        (lambda: kernels.sparse_decode(idx, vals, W[0], b), "W_dec must be a 2-D"),
        (lambda: kernels.sparse_decode(idx[None], vals, W, b), "idx must be a 2-D"),
        (lambda: kernels.gather_preacts(torch.randn(5, 9), enc.t(), None, idx), "width"),
        (lambda: kernels.gather_preacts(x, enc.t(), torch.randn(3), idx), "b_enc must"),
        (lambda: kernels.gather_preacts(x[:4], enc.t(), None, idx), "N=4"),
        (lambda: kernels.gather_preacts(x, enc.t(), None, idx, pre=x), "pre must be"),
        (lambda: kernels.encode_topk(x, enc.t(), None, 11), "k must be in 1..10"),
        (lambda: kernels.topk_select(torch.randn(5, 10), 0), "k must be in 1..10"),
        (lambda: kernels.topk_select(torch.randn(5, 10), 2.5), "k must be an int"),
        (lambda: kernels.topk_select(torch.randn(10), 2), "pre must be a 2-D"),
        (lambda: kernels.threshold_select(torch.randn(5, 10), torch.ones(9)), "threshold must"),
        (lambda: kernels.threshold_select(torch.randn(5, 10), "0.5"), "threshold must"),
        (lambda: kernels.batch_topk_select(torch.randn(5, 10), 11), "choose 0 < k <= 10"),
        (lambda: kernels.batch_topk_select(torch.randn(5, 10), 0), "choose 0 < k"),
        (lambda: kernels.pad_active(torch.randn(5, 10)), "bool"),
    ]
    for fn, msg in bad:
        with pytest.raises(ValueError, match=msg):
            fn()


def test_dispatch(monkeypatch):
    monkeypatch.delenv("SAELAB_DISABLE_TRITON")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernels.backend("cpu") == "torch"
    assert kernels.backend(torch.device("meta")) == "torch"
    expected = "triton" if kernels.dispatch.triton_available() else "torch"
    assert kernels.backend("cuda") == expected
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.backend("cpu") == expected
    for off in ("1", "true"):
        monkeypatch.setenv("SAELAB_DISABLE_TRITON", off)
        assert kernels.backend("cuda") == "torch" and kernels.backend("cpu") == "torch"
    monkeypatch.setenv("SAELAB_DISABLE_TRITON", "0")
    assert kernels.backend("cuda") == expected


def test_imports_and_runs_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail
        "import torch\nfrom saelab import kernels\n"
        "assert kernels.backend('cuda') == 'torch'\n"
        "i = torch.tensor([[0, 2]]); v = torch.ones(1, 2, requires_grad=True)\n"
        "kernels.sparse_decode(i, v, torch.eye(3)).sum().backward()\n"
        "assert 'saelab.kernels.triton_ops' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    env.pop("SAELAB_DISABLE_TRITON")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_torch_primitives_duplicates_padding_and_fallbacks(monkeypatch):
    """Repeated latents in a row (padding repeats latent 0) sum; zero weights are skipped
    exactly; the chunked gather (half precision, non-CPU devices) matches the CSR one."""
    g = gen()
    idx = torch.tensor([[0, 0, 3], [2, 2, 2], [0, 0, 0]])
    vals = torch.tensor([[1.0, 2.0, 0.5], [1.0, -1.0, 3.0], [0.0, 0.0, 0.0]])
    a = torch.randn(3, 4, generator=g)
    table = torch.randn(5, 4, generator=g)
    ref = torch.zeros(5, 4)
    for n in range(3):
        for j in range(3):
            ref[idx[n, j]] += vals[n, j] * a[n]
    torch.testing.assert_close(torch_ops.scatter_rows(idx, vals, a, 5), ref)
    owner, weight, starts = torch_ops.segment_plan(idx, vals, 5)
    assert starts.tolist() == [0, 2, 2, 5, 6, 6]  # the three zero weights sit past the end
    assert torch.equal(weight[:6], torch.tensor([1.0, 2.0, 1.0, -1.0, 3.0, 0.5]))
    dense_dot = torch.einsum("nkd,nd->nk", table[idx], a)
    torch.testing.assert_close(torch_ops.gather_dot(idx, a, table), dense_dot)
    monkeypatch.setattr(torch_ops, "_CHUNK_ELEMENTS", 20)  # one row per chunk
    torch.testing.assert_close(torch_ops._gather_dot_chunked(idx, a, table), dense_dot)
    bf = torch_ops.gather_dot(idx, a.bfloat16(), table.bfloat16())
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), dense_dot, rtol=3e-2, atol=3e-2)
    e = torch.zeros(0, 3, dtype=torch.long)
    assert torch_ops.scatter_rows(e, torch.zeros(0, 3), torch.zeros(0, 4), 5).abs().sum() == 0
    assert torch_ops.gather_dot(e, torch.zeros(0, 4), table).shape == (0, 3)


def test_backward_is_deterministic():
    g = gen()
    idx = torch.randint(0, 20, (300, 8), generator=g)
    vals, a = torch.randn(300, 8, generator=g), torch.randn(300, 16, generator=g)
    first = torch_ops.scatter_rows(idx, vals, a, 20)
    assert torch.equal(first, torch_ops.scatter_rows(idx, vals, a, 20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("bounds", [[6, 12, 24, 48, 96], [1, 95, 96], [96]], ids=str)
def test_banded_decode(dtype, bounds):
    """`banded_decode` forward and grads (vals, W_dec) against a float64 dense decode of
    each band; padded slots, duplicate latents, empty rows and empty bands included."""
    from kernel_cases import TOL, assert_close, leaf, randn, random_idx

    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    n, k, d, d_sae = 37, 10, 24, 96
    idx = random_idx(n, k, d_sae, g)
    idx[:, 1] = idx[:, 0]  # a latent twice in a row
    vals = randn(n, k, g=g)
    pad = torch.rand(n, k, generator=g) < 0.3
    idx[pad], vals[pad] = 0, 0.0
    idx[3], vals[3] = 0, 0.0
    W = randn(d_sae, d, g=g, scale=d**-0.5)
    grad = randn(n, len(bounds), d, g=g)

    v, w = leaf(vals, dtype), leaf(W, dtype)
    out = kernels.banded_decode(idx, v, w, bounds)
    assert out.shape == (n, len(bounds), d) and out.dtype == dtype
    out.backward(grad.to(dtype))

    v2, w2 = leaf(leaf(vals, dtype), torch.float64), leaf(leaf(W, dtype), torch.float64)
    parts, lower = [], 0
    for upper in bounds:
        band = ((idx >= lower) & (idx < upper)).double()
        dense = torch.zeros(n, d_sae, dtype=torch.float64).scatter_add(1, idx, v2 * band)
        parts.append(dense @ w2)
        lower = upper
    ref = torch.stack(parts, 1)
    ref.backward(grad.to(dtype).double())
    tol, tag = TOL[dtype], f"banded {bounds} {dtype}"
    for name, a, r in (
        ("out", out, ref),
        ("grad vals", v.grad, v2.grad),
        ("grad W", w.grad, w2.grad),
    ):
        assert a.dtype == dtype, f"{tag} {name}: dtype {a.dtype}"
        assert_close(f"{tag} {name}", a.detach(), r.detach(), tol, seed)
    # the bands add up to the plain decode
    torch.testing.assert_close(
        out.detach().sum(1).double(),
        kernels.sparse_decode(idx, v.detach(), w.detach()).double(),
        rtol=tol * 10,
        atol=tol * 10,
    )


def test_banded_decode_bad_bounds():
    idx, vals, W = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(8, 4)
    for bounds in ([], [4], [4, 4, 8], [5, 3, 8]):
        with pytest.raises(ValueError, match="bounds"):
            kernels.banded_decode(idx, vals, W, bounds)
