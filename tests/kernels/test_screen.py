"""The bf16-screened exact top-k (`kernels/screen.py`) against float64 references: its error
bound holds entry by entry on torch's own bf16 product, its selection is the exact top-k
(also where bf16 cannot tell the leaders apart), it declines non-finite inputs, it does not
depend on the thread count, and the fused TopK path takes it where it pays."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import new_seed

from saelab import kernels
from saelab.kernels import fused, screen

needs_screen = pytest.mark.skipif(
    not screen.available(), reason="no native kernels or no bf16 instructions on this CPU"
)


def _case(seed: int, n: int = 96, d: int = 80, s: int = 2048, scale: float = 1.0):
    """Rows of very different norms (a 1e3x one and a 1e-3x one), latents of different
    norms, a bias: the bound's every term matters somewhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    x[0] *= 1e3
    x[1] *= 1e-3
    W = torch.randn(s, d, generator=g) * torch.rand(s, 1, generator=g) * 2
    b = torch.randn(s, generator=g) * 0.3 * scale
    return x, W, b


def _exact(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    pre = x.double() @ W.double().t()
    return pre if b is None else pre + b.double()


def _check_exact_topk(vals, idx, x, W, b, k, msg):
    """The chosen latents are a top-k of the float64 values, up to ties within fp32 rounding
    (1e-6 of the row's scale), and each value is its latent's fp32 pre-activation."""
    exact = _exact(x, W, b)
    row_scale = exact.abs().amax(1, keepdim=True)
    chosen = torch.zeros_like(exact, dtype=torch.bool).scatter_(1, idx, True)
    assert (chosen.sum(1) == k).all(), f"a latent chosen twice, {msg}"
    worst_in = exact.masked_fill(~chosen, float("inf")).amin(1, keepdim=True)
    best_out = exact.masked_fill(chosen, float("-inf")).amax(1, keepdim=True)
    assert (worst_in >= best_out - 1e-6 * row_scale).all(), f"not the top-k, {msg}"
    got = vals.double() - exact.gather(1, idx)
    assert (got.abs() <= 1e-6 * row_scale).all(), f"values off, {msg}"


@needs_screen
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_the_bound_holds_for_every_entry_of_torchs_bf16_product(scale):
    """|v - (a + b)| <= E for every entry, v the exact value, a torch's bf16 product, E the
    bound from `_bound_terms` (the C kernel adds the same terms)."""
    seed = new_seed()
    x, W, b = _case(seed, scale=scale)
    xs, ws = screen._bf16_rows(x), screen._bf16_rows(W)
    a = (xs[0] @ ws[0].t()).double()
    alpha, beta, rowc, c1 = screen._bound_terms(xs[1], xs[2], x.shape[1])
    colc = 4 * 2.0**-24 * b.double().abs() * (1 + 2.0**-12)
    E = (
        alpha.double()[:, None] * ws[1].double()[None, :]
        + beta.double()[:, None] * ws[2].double()[None, :]
        + c1 * a.abs()
        + colc[None, :]
        + rowc.double()[:, None]
    )
    err = (_exact(x, W, b) - (a + b.double())).abs()
    assert (err <= E).all(), f"bound broken by {(err - E).max().item():.3g} (seed {seed})"
    assert (E < 0.05 * _exact(x, W, b).abs().amax(1, keepdim=True)).all()  # and useful


@needs_screen
@pytest.mark.parametrize("k", [1, 16, 64])
def test_screened_topk_is_the_exact_topk(k):
    seed = new_seed()
    x, W, b = _case(seed)
    found = screen.screened_topk(x, W, b, k)
    assert found is not None and found[2] is None
    _check_exact_topk(*found[:2], x, W, b, k, f"k {k}, seed {seed}")
    found = screen.screened_topk(x, W, None, k)  # no bias
    assert found is not None
    _check_exact_topk(*found[:2], x, W, None, k, f"no bias, k {k}, seed {seed}")


@needs_screen
def test_leaders_bf16_cannot_tell_apart_are_ranked_in_fp32():
    """Latents 0..199 are one direction plus perturbations far below bf16's resolution, with
    pre-activations near 0 (x is orthogonal to that direction; the other latents' bias puts
    them far below): the screened product cannot order the leaders, and its error there is
    the inputs' rounding, not a fraction of |a|; only the fp32 values order them."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    x, W, b = _case(seed, s=2048)
    W[:200] = W[0] + 1e-4 * torch.randn(200, W.shape[1], generator=g)
    u = W[0] / W[0].norm()
    x = x - (x @ u)[:, None] * u  # orthogonal to the leaders' direction
    b[:] = -1e4
    b[:200] = 0.0
    found = screen.screened_topk(x, W, b, 32)
    assert found is not None
    assert screen.screened_topk.last_candidates >= 100 * x.shape[0]
    _check_exact_topk(*found[:2], x, W, b, 32, f"seed {seed}")


@needs_screen
def test_exact_ties_keep_torchs_values():
    """Small integers: every product is exact in fp32, so the chosen values must equal
    torch.topk's of the fp32 product exactly (only which of equal latents is free)."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (50, 64), generator=g).float()
    W = torch.randint(-2, 3, (1024, 64), generator=g).float()
    b = torch.randint(-2, 3, (1024,), generator=g).float()
    vals, idx, _ = screen.screened_topk(x, W, b, 20)
    ref = torch.addmm(b, x, W.t()).topk(20, dim=1).values
    assert torch.equal(vals.sort(1).values, ref.sort(1).values), f"seed {seed}"
    assert torch.equal(vals, torch.addmm(b, x, W.t()).gather(1, idx)), f"seed {seed}"


@needs_screen
@pytest.mark.parametrize("where", ["x", "W", "bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_declined(where, bad):
    x, W, b = _case(new_seed(), n=8, s=1024)
    {"x": x, "W": W, "bias": b}[where].view(-1)[5] = bad
    assert screen.screened_topk(x, W, b, 8) is None


@needs_screen
def test_independent_of_the_thread_count():
    seed = new_seed()
    x, W, b = _case(seed, n=301)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = screen.screened_topk(x, W, b, 24)
        torch.set_num_threads(3)
        three = screen.screened_topk(x, W, b, 24)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1]), f"seed {seed}"


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(screen.DISABLE_ENV, "1")
    assert not screen.available()
    x, W, b = _case(new_seed(), n=4, s=256)
    assert screen.screened_topk(x, W, b, 4) is None


@needs_screen
@pytest.mark.parametrize("cols_k", [0, 40])
def test_fused_topk_takes_the_screening_where_it_pays(monkeypatch, cols_k):
    """At d_sae 4096 the fused path screens; the selection, the values and AuxK's dead
    columns (exact fp32 of their own) agree with the fp32 product's."""
    monkeypatch.setenv("SAELAB_DISABLE_TRITON", "1")
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    n, d, s, k = 64, 48, screen.MIN_LATENTS, 32
    x = torch.randn(n, d, generator=g)
    enc = torch.randn(s, d, generator=g) / d**0.5
    b = torch.randn(s, generator=g) * 0.1
    cols = torch.randperm(s, generator=g)[:300].sort().values
    assert screen.pays(s, k)
    calls, real = [], screen.screened_topk
    monkeypatch.setattr(screen, "screened_topk", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    vals, idx, extra = kernels.topk_preacts(x, enc.t(), b, k, cols, cols_k=cols_k)
    assert calls, "the fused path did not screen"
    _check_exact_topk(vals, idx, x, enc, b, k, f"seed {seed}")
    dead = torch.addmm(b[cols], x, enc[cols].t())
    if cols_k == 0:
        torch.testing.assert_close(extra, dead, msg=f"seed {seed}")
    else:
        ref = fused.positive_top(dead, cols_k)
        torch.testing.assert_close(extra.vals.sort(1).values, ref.vals.sort(1).values)


@needs_screen
@pytest.mark.parametrize("shift", [-3.0, 0.0], ids=["mostly-negative", "half-positive"])
def test_auxk_positive_top_among_dead_latents(shift):
    """AuxK's each row's at most cols_k largest positive values among the dead latents,
    screened: the same positive entries as the float64 values' (up to fp32-rounding ties),
    rows with fewer positives than cols_k keep them all, and non-positive ones never count."""
    seed = new_seed()
    g = torch.Generator().manual_seed(seed)
    x, W, b = _case(seed, n=80, s=2048)
    cols = torch.randperm(2048, generator=g)[:500].sort().values
    b[cols] += shift * W[cols].norm(dim=1) * x.norm(dim=1).median() / x.shape[1] ** 0.5
    cols_k = 24
    vals, idx, aux = screen.screened_topk(x, W, b, 16, cols=cols, cols_k=cols_k)
    _check_exact_topk(vals, idx, x, W, b, 16, f"seed {seed}")
    exact = _exact(x, W, b)[:, cols]
    aux_vals, aux_pos, count = aux
    for r in range(x.shape[0]):
        positive = exact[r][exact[r] > 0]
        want = min(cols_k, positive.numel())
        assert count[r] == want, f"row {r}: {int(count[r])} positive, want {want} (seed {seed})"
        got = aux_pos[r, :want]
        assert got.unique().numel() == want
        tol = 1e-6 * _exact(x, W, b)[r].abs().max().item()
        torch.testing.assert_close(aux_vals[r, :want].double(), exact[r, got], rtol=0, atol=tol)
        if want:
            kth = positive.topk(want).values[-1]
            assert (exact[r, got] >= kth - tol).all(), f"row {r} (seed {seed})"
    assert screen.screened_topk(x, W, b, 16, cols=cols, cols_k=0)[2] is None
