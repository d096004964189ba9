"""The fused CPU matmul + top-k (`kernels.topk_preacts`) and the shared segment sort of a
selection (`kernels.shared_segments`), against dense references: torch.topk of the float32
product (values equal, ties / NaN / ±inf included) and float64 gradients."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, new_seed

from saelab import kernels
from saelab.kernels import fused, torch_ops


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    monkeypatch.setenv("SAELAB_DISABLE_TRITON", "1")
    monkeypatch.delenv("SAELAB_DISABLE_FUSED", raising=False)


def _case(seed: int, n: int = 150, d: int = 24, d_sae: int = 1024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    enc = torch.randn(d_sae, d, generator=g) / d**0.5  # [d_sae, d_in], as the SAEs store it
    b = torch.randn(d_sae, generator=g) * 0.1
    cols = torch.randperm(d_sae, generator=g)[:37]
    return g, x, enc, b, cols


def _check_selection(vals, idx, extra, pre, k, cols, msg):
    ref = pre.topk(k, dim=1).values
    torch.testing.assert_close(vals.sort(1).values, ref.sort(1).values, equal_nan=True, msg=msg)
    torch.testing.assert_close(vals, pre.gather(1, idx), equal_nan=True, msg=msg)
    assert (idx.sort(1).values.diff(1) > 0).all(), f"a latent chosen twice, {msg}"
    if cols is not None:
        torch.testing.assert_close(extra, pre[:, cols], equal_nan=True, msg=msg)


@pytest.mark.parametrize("values", ["normal", "ties", "nan-and-inf"])
@pytest.mark.parametrize("blocks", [None, 4096 * 7], ids=["whole", "row-blocks"])
def test_topk_preacts_equals_torch_topk_of_the_product(values, blocks):
    """Values equal torch.topk's on the same float32 product, row by row; indices point at
    them; the extra columns are the product's columns; row blocks change nothing."""
    seed = new_seed()
    g, x, enc, b, cols = _case(seed)
    if values == "ties":  # few distinct products: many ties at the k-th place
        x, enc, b = x.round(), enc.round(), b.round()
    if values == "nan-and-inf":
        b[5] = float("nan")  # a NaN column: ranked largest, as torch.topk ranks it
        b[7] = float("inf")
        b[9] = float("-inf")
        x[3] = float("-inf") * torch.sign(x[3])  # a row of ±inf and NaN products
    pre = torch.addmm(b, x, enc.t())
    for k in (1, 8, 30):
        vals, idx, extra = kernels.topk_preacts(x, enc.t(), b, k, cols, block_bytes=blocks)
        _check_selection(vals, idx, extra, pre, k, cols, f"k {k}, seed {seed}")
    vals, idx, extra = kernels.topk_preacts(x, enc.t(), None, 8, None, block_bytes=blocks)
    assert extra is None
    _check_selection(vals, idx, None, x @ enc.t(), 8, None, f"no bias, seed {seed}")


def test_unfused_path_and_other_dtypes_give_the_same_selection(monkeypatch):
    seed = new_seed()
    _, x, enc, b, cols = _case(seed, n=40)
    fused_out = kernels.topk_preacts(x, enc.t(), b, 6, cols)
    monkeypatch.setenv("SAELAB_DISABLE_FUSED", "1")
    assert not kernels.fused_available("cpu")
    plain = kernels.topk_preacts(x, enc.t(), b, 6, cols)
    for a, r in zip(fused_out, plain):
        torch.testing.assert_close(a, r, msg=f"seed {seed}")
    monkeypatch.delenv("SAELAB_DISABLE_FUSED")
    x, enc, b = x.double(), enc.double(), b.double()
    vals, idx, extra = kernels.topk_preacts(x, enc.t(), b, 6, cols)
    _check_selection(vals, idx, extra, torch.addmm(b, x, enc.t()), 6, cols, f"fp64, seed {seed}")


def test_workspace_is_reused_and_never_aliased_by_results():
    seed = new_seed()
    _, x, enc, b, cols = _case(seed, n=64, d_sae=512)
    kernels.release_workspace()
    first = kernels.topk_preacts(x, enc.t(), b, 5, cols)
    kept = [t.clone() for t in first]
    ptr = fused._LOCAL.buffers[(torch.float32, "cpu")].data_ptr()
    kernels.topk_preacts(-x, enc.t(), b, 5, cols)  # overwrites the workspace
    assert fused._LOCAL.buffers[(torch.float32, "cpu")].data_ptr() == ptr
    for a, r in zip(first, kept):
        assert torch.equal(a, r), f"a result aliases the workspace, seed {seed}"
    kernels.release_workspace()
    assert not getattr(fused._LOCAL, "buffers", None)


def test_topk_preacts_bad_input():
    x, enc = torch.randn(4, 6), torch.randn(10, 6)
    with pytest.raises(ValueError, match="k must be in 1..10"):
        kernels.topk_preacts(x, enc.t(), None, 11)
    with pytest.raises(ValueError, match="width"):
        kernels.topk_preacts(x, enc, None, 2)
    with pytest.raises(ValueError, match="outside"):
        kernels.topk_preacts(x, enc.t(), None, 2, torch.tensor([10]))


def test_shared_sort_scatter_equals_float64_reference_with_zero_weights():
    """A shared sort (zero weights kept) gives each scatter what its own sort gives, and
    both equal a dense float64 product."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    n, k, d, n_rows = 60, 6, 10, 40
    idx = torch.rand(n, n_rows, generator=g).topk(k, dim=1).indices  # distinct per row
    w1 = torch.randn(n, k, generator=g)
    w1[w1 < -0.8] = 0.0  # ReLU-style zeros
    w2 = torch.randn(n, k, generator=g)
    a1, a2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    shared = kernels.shared_segments(idx, n_rows)
    for w, a in ((w1, a1), (w2, a2)):
        got = torch_ops.scatter_rows(idx, w, a, n_rows, shared)
        dense = torch.zeros(n, n_rows, dtype=torch.float64).scatter_(1, idx, w.double())
        torch.testing.assert_close(
            got.double(), dense.t() @ a.double(), rtol=1e-5, atol=1e-5, msg=f"seed {seed}"
        )
        torch.testing.assert_close(got, torch_ops.scatter_rows(idx, w, a, n_rows))
    other = idx.flip(1).contiguous()  # another selection: the plan is not used for it
    assert not shared.matches(other, n_rows)
    torch.testing.assert_close(
        torch_ops.scatter_rows(other, w2, a2, n_rows, shared),
        torch_ops.scatter_rows(other, w2, a2, n_rows),
    )


def test_topk_encoder_and_decoder_with_one_shared_sort_match_float64():
    """The TopK step as the SAE runs it (fused selection, values handed to the gather, one
    sort shared by the encoder's and decoder's backward): loss and every gradient equal a
    dense float64 computation of the same selection."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    n, d, d_sae, k = 70, 12, 256, 6
    x = torch.randn(n, d, generator=g)
    enc = (torch.randn(d_sae, d, generator=g) / d**0.5).requires_grad_()
    b_enc = (torch.randn(d_sae, generator=g) * 0.1).requires_grad_()
    W_dec = torch.randn(d_sae, d, generator=g).requires_grad_()
    b_dec = torch.randn(d, generator=g).requires_grad_()
    sel, idx, _ = kernels.topk_preacts(x - b_dec.detach(), enc.t(), b_enc, k)
    shared = kernels.shared_segments(idx, d_sae)
    vals = kernels.gather_preacts(
        x, enc.t(), b_enc, idx, shift=b_dec, values=sel, shared=shared
    ).relu()
    out = kernels.sparse_decode(idx, vals, W_dec, b_dec, shared)
    (out - x).pow(2).sum().backward()
    assert shared._plan is not None, "the shared sort was not used"

    ref = [t.detach().double().requires_grad_() for t in (enc, b_enc, W_dec, b_dec)]
    e64, be64, wd64, bd64 = ref
    pre = (x.double() - bd64) @ e64.t() + be64
    chosen = torch.zeros(n, d_sae, dtype=torch.float64).scatter(1, idx, 1.0)
    out_ref = (pre.relu() * chosen) @ wd64 + bd64
    (out_ref - x.double()).pow(2).sum().backward()
    # Tolerances relative to each tensor's largest entry: a float32 gradient entry that is a
    # near-cancelling sum of large terms has an absolute error near eps x the terms, not x itself.
    assert_close("output", out, out_ref, 1e-6, seed)
    for name, got, r in zip(("W_enc", "b_enc", "W_dec", "b_dec"), (enc, b_enc, W_dec, b_dec), ref):
        assert_close(name, got.grad, r.grad, 1e-5, seed)


def _positive_top_reference(cols_pre: torch.Tensor, k: int) -> list[dict[int, float]]:
    """Row by row, {position: value} of the positive entries among the row's top k."""
    out = []
    for row in cols_pre:
        top = row.topk(min(k, row.numel())).indices.tolist()
        out.append({c: float(row[c]) for c in top if row[c] > 0})
    return out


def _check_positive_top(top, ref, k, msg):
    widest = max((len(r) for r in ref), default=0)
    if widest == 0:
        assert top is None, msg
        return
    assert top.idx.shape == top.vals.shape == (len(ref), min(k, widest)), msg
    for r, want in enumerate(ref):
        got = {int(c): float(v) for c, v in zip(top.idx[r], top.vals[r]) if v > 0}
        assert got.keys() == want.keys(), f"row {r}, {msg}"
        for c in want:
            assert abs(got[c] - want[c]) <= 1e-5 * max(1.0, abs(want[c])), f"row {r}, {msg}"
        pad = top.vals[r] <= 0
        assert (top.vals[r][pad] == 0).all() and (top.idx[r][pad] == 0).all(), msg


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("blocks", [None, 4096 * 7], ids=["whole", "row-blocks"])
def test_topk_preacts_positive_top_of_the_columns(monkeypatch, native, blocks):
    """With `cols_k`, `extra` holds each row's positive entries among its top `cols_k` of
    `pre[:, cols]` (AuxK's inputs) and nothing else positive, padded with zeros; the native
    kernel (found in cache, no column copy) and the torch path agree with a brute force,
    whole or in row blocks, including blocks with no positive entry at all."""
    if not native:
        monkeypatch.setenv("SAELAB_DISABLE_NATIVE", "1")
    elif kernels.native.library() is None:
        pytest.skip("no C compiler here: the native kernel is not built")
    seed = new_seed()
    g, x, enc, b, cols = _case(seed)
    b[cols] -= 2.5  # dead latents: mostly negative, a few positive entries per row
    b[cols[:3]] += 3.0  # ... and a few latents positive in most rows
    x[60:] *= 0.01  # later rows: no positive dead entry (a whole row block of None)
    pre = torch.addmm(b, x, enc.t())
    for k in (1, 4, 37):
        vals, idx, top = kernels.topk_preacts(x, enc.t(), b, 8, cols, block_bytes=blocks, cols_k=k)
        _check_selection(vals, idx, None, pre, 8, None, f"k {k}, seed {seed}")
        _check_positive_top(top, _positive_top_reference(pre[:, cols], k), k, f"k {k}, seed {seed}")
    b[cols] -= 100.0
    _, _, top = kernels.topk_preacts(x, enc.t(), b, 8, cols, block_bytes=blocks, cols_k=5)
    assert top is None, f"no positive dead entry anywhere, seed {seed}"


def test_positive_top_of_dense_columns_matches_brute_force():
    from saelab.kernels.select import positive_top

    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    cols = torch.randn(64, 300, generator=g) - 2.5
    cols[3] += 5.0  # one row with many positive entries: it sets the width, capped at k
    for k in (4, 40, 300):
        _check_positive_top(
            positive_top(cols, k), _positive_top_reference(cols, k), k, f"k {k}, seed {seed}"
        )
    assert positive_top(-cols.abs() - 1, 8) is None
