"""The native C kernels (`kernels/native.py`) against torch references, and the fallback when
they cannot be built."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import new_seed

from saelab.kernels import native
from saelab.kernels.select import topk_select

needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler here")


def _check_topk(vals, idx, pre, k, msg):
    ref = pre.topk(k, dim=1).values
    assert torch.equal(vals.sort(1).values, ref.sort(1).values), msg
    assert torch.equal(pre.gather(1, idx), vals), msg
    assert (idx.sort(1).values.diff(1) > 0).all(), f"a latent chosen twice, {msg}"


@needs_native
@pytest.mark.parametrize(
    "n,d,k",
    [(37, 1000, 64), (16, 18432, 64), (9, 70, 3), (5, 64, 64), (3, 31, 1), (12, 4096, 200)],
)
def test_topk_rows_equals_torch_topk(n, d, k):
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(n, d, generator=g) + torch.randn(d, generator=g)  # columns differ in scale
    found = native.topk_rows(pre, k)
    assert found is not None and found[2] is None
    _check_topk(found[0], found[1], pre, k, f"seed {seed}")


@needs_native
def test_topk_rows_with_ties_and_negative_rows():
    """Many equal values (only the value multiset is defined then) and all-negative rows."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    pre = torch.randint(-3, 3, (20, 2048), generator=g).float()
    pre[5] = -torch.rand(2048, generator=g) - 1
    pre[6] = 0.0
    found = native.topk_rows(pre, 40)
    assert found is not None
    _check_topk(found[0], found[1], pre, 40, f"seed {seed}")


@needs_native
def test_topk_rows_is_independent_of_the_thread_count():
    seed = new_seed()
    pre = torch.randn(301, 3000, generator=torch.Generator().manual_seed(seed))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.topk_rows(pre, 32)
        torch.set_num_threads(3)
        three = native.topk_rows(pre, 32)
    finally:
        torch.set_num_threads(threads)
    assert one is not None and three is not None
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1]), f"seed {seed}"


@needs_native
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_go_to_torch(bad):
    """The native kernel declines a row with NaN or ±inf; `topk_select` then ranks as torch."""
    pre = torch.randn(8, 1024, generator=torch.Generator().manual_seed(new_seed()))
    pre[3, 17] = bad
    assert native.topk_rows(pre, 16) is None
    vals, idx = topk_select(pre, 16)
    ref = pre.topk(16, dim=1).values
    torch.testing.assert_close(vals.sort(1).values, ref.sort(1).values, equal_nan=True)


def test_other_dtypes_and_layouts_are_declined():
    pre = torch.randn(4, 512, dtype=torch.float64)
    assert native.topk_rows(pre, 8) is None
    assert native.topk_rows(torch.randn(512, 4).t(), 8) is None
    vals, idx = topk_select(pre, 8)
    assert torch.equal(vals.sort(1).values, pre.topk(8, dim=1).values.sort(1).values)


def test_without_a_compiler_the_torch_path_runs(monkeypatch, tmp_path):
    """No compiler on PATH: no library, no error, and `topk_select` still exact."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    native._load.cache_clear()
    try:
        assert native.library() is None
        pre = torch.randn(10, 2048, generator=torch.Generator().manual_seed(new_seed()))
        vals, _ = topk_select(pre, 64)
        assert torch.equal(vals.sort(1).values, pre.topk(64, dim=1).values.sort(1).values)
    finally:
        native._load.cache_clear()


def test_disable_env_turns_it_off(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert native.library() is None
    assert native.topk_rows(torch.randn(4, 256), 4) is None


def test_build_is_cached_and_keyed_by_source(monkeypatch, tmp_path):
    """A fresh cache folder gets one library; a second build reuses the file."""
    cc = native._compiler()
    if cc is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    first = native._build(cc)
    stamp = first.stat().st_mtime_ns
    assert native._build(cc) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


@needs_native
def test_topk_rows_with_bias_selects_on_the_sum():
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    pre, bias = torch.randn(40, 3000, generator=g), torch.randn(3000, generator=g)
    cols = torch.randperm(3000, generator=g)[:333]
    found = native.topk_rows(pre, 50, bias, cols)
    assert found is not None
    _check_topk(found[0], found[1], pre + bias, 50, f"seed {seed}")
    assert torch.equal(found[2], (pre + bias)[:, cols])


@needs_native
def test_project_and_normalize_rows_match_float64():
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(300, 577, generator=g)  # a width that is no multiple of the vector lanes
    w /= w.norm(dim=1, keepdim=True)
    grad = torch.randn(300, 577, generator=g)
    ref = grad.double() - (grad.double() * w.double()).sum(1, keepdim=True) * w.double()
    version = grad._version
    assert native.project_rows_(grad, w)
    assert grad._version > version  # autograd sees the in-place write
    torch.testing.assert_close(grad.double(), ref, rtol=0, atol=1e-5, msg=f"seed {seed}")
    raw = torch.randn(300, 577, generator=g) * 3
    raw[7] = 0.0  # a zero row stays zero (divided by eps, not by 0)
    ref = raw.double() / raw.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    version = raw._version
    assert native.normalize_rows_(raw)
    assert raw._version > version
    torch.testing.assert_close(raw.double(), ref, rtol=0, atol=1e-6, msg=f"seed {seed}")
    assert not native.project_rows_(grad.double(), w.double())  # other dtypes: caller's path


@needs_native
def test_topk_rows_declines_bad_columns():
    """Columns out of range, negative, 2-D or floating would be read unchecked by the C code:
    they are declined (the caller's torch path then raises or indexes as torch does)."""
    pre = torch.randn(6, 300, generator=torch.Generator().manual_seed(new_seed()))
    for cols in (
        torch.tensor([0, 300]),
        torch.tensor([-1, 3]),
        torch.tensor([[1, 2]]),
        torch.tensor([1.0]),
    ):
        assert native.topk_rows(pre, 4, None, cols) is None
    found = native.topk_rows(pre.requires_grad_(), 4, None, torch.tensor([0, 299]))
    assert found is not None and torch.equal(found[2], pre.detach()[:, [0, 299]])


@needs_native
def test_decode_grads_in_one_latent_major_pass_match_float64():
    """`decode_grads` with a shared sort runs the native segment kernel (values' and W_dec's
    gradients in one pass): float64 references, a width that is no multiple of its 64-lane
    blocks, repeated latents across rows, and the same bits whatever the thread count."""
    from kernel_cases import assert_close, random_idx

    from saelab.kernels import torch_ops

    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    n, k, s, d = 300, 12, 500, 133
    idx = random_idx(n, k, s, g)
    vals, grad_out = torch.randn(n, k, generator=g), torch.randn(n, d, generator=g)
    W = torch.randn(s, d, generator=g)
    shared = torch_ops.SharedSegments(idx, s)
    order, _, starts = shared.plan()
    assert native.segment_rows(starts, order, k, vals, grad_out, W) is not None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch_ops.decode_grads(idx, vals, grad_out, W, shared)
        torch.set_num_threads(3)
        three = torch_ops.decode_grads(idx, vals, grad_out, W, shared)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1]), f"seed {seed}"
    ref_vals = (grad_out.double()[:, None, :] * W.double()[idx]).sum(-1)
    rows = grad_out.double().repeat_interleave(k, 0) * vals.double().reshape(-1, 1)
    ref_w = torch.zeros(s, d, dtype=torch.float64).index_add_(0, idx.reshape(-1), rows)
    assert_close("grad_vals", one[0], ref_vals, 1e-5, seed)
    assert_close("grad_W_dec", one[1], ref_w, 1e-5, seed)
    plain = torch_ops.decode_grads(idx, vals, grad_out, W)  # no shared sort: the torch ops
    assert_close("grad_vals (torch ops)", plain[0], ref_vals, 1e-5, seed)
    assert_close("grad_W_dec (torch ops)", plain[1], ref_w, 1e-5, seed)
    only_sums = native.segment_rows(starts, order, k, vals, grad_out)  # no table: no dots
    assert only_sums is not None and only_sums[1] is None
    assert torch.equal(only_sums[0], one[1]), f"seed {seed}"


def test_a_build_without_openmp_gives_the_same_results(monkeypatch, tmp_path):
    """A compiler without OpenMP builds the pthread `parallel_for`: same selections and
    gradients as the OpenMP build, bit for bit."""
    import ctypes

    from saelab.kernels import torch_ops

    cc = native._compiler()
    if cc is None or native.library() is None:
        pytest.skip("no C compiler here")
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    pre, bias = torch.randn(300, 3000, generator=g), torch.randn(3000, generator=g)
    idx = pre.topk(16, dim=1).indices
    vals, grad_out = torch.randn(300, 16, generator=g), torch.randn(300, 70, generator=g)
    W = torch.randn(3000, 70, generator=g)
    shared = torch_ops.SharedSegments(idx, 3000)

    def run():
        return native.topk_rows(pre, 32, bias), torch_ops.decode_grads(
            idx, vals, grad_out, W, shared
        )

    with_openmp = run()
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(native, "FLAGS", [f for f in native.FLAGS if f != "-fopenmp"])
    lib = native.bind(ctypes.CDLL(str(native._build(cc))))
    monkeypatch.setattr(native, "_load", lambda: lib)
    without = run()
    assert torch.equal(with_openmp[0][0], without[0][0]), f"seed {seed}"
    assert torch.equal(with_openmp[0][1], without[0][1]), f"seed {seed}"
    assert torch.equal(with_openmp[1][0], without[1][0]), f"seed {seed}"
    assert torch.equal(with_openmp[1][1], without[1][1]), f"seed {seed}"
