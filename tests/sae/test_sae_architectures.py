"""Architectures: shapes, selection semantics, loss terms, STE gradients, config checks."""

from __future__ import annotations

import pytest
import torch

from sae import ops
from sae.architectures.jumprelu import JumpReLUFn, StepFn
from sae.base import StepContext
from sae.registry import REGISTRY, build_sae, get_architecture, make_config
from saelab.errors import UserError

TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")


def make(arch: str, d_sae: int = 64, d_in: int = 16, **kw):
    if arch in TOPK_FAMILY:
        kw.setdefault("k", 4)
    return build_sae(make_config(arch, d_sae=d_sae, **kw), d_in)


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_shapes_and_forward_is_decode_of_encode(arch):
    torch.manual_seed(0)
    sae = make(arch).eval()
    x = torch.randn(3, 5, 16)
    f = sae.encode(x)
    assert f.shape == (3, 5, 64)
    assert (f >= 0).all()
    out = sae(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, sae.decode(f), rtol=1e-5, atol=1e-5)
    assert sae.W_enc.shape == (16, 64) and sae.W_dec.shape == (64, 16)
    assert sae.encoder_weight.is_contiguous()


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_training_forward_terms_and_backward(arch):
    torch.manual_seed(0)
    sae = make(arch)
    x = torch.randn(32, 16)
    out = sae.training_forward(x, StepContext(dead_mask=torch.rand(64) < 0.3))
    assert "mse" in out.terms and torch.isfinite(out.loss)
    out.loss.backward()
    assert sae.encoder_weight.grad is not None and sae.W_dec.grad is not None
    assert torch.isfinite(sae.W_dec.grad).all()


def test_topk_exactly_k_and_batchtopk_k_on_average():
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    topk = make("topk")
    code = topk.training_forward(x, StepContext()).code
    assert code.idx.shape == (40, 4)
    assert (code.l0() <= 4).all()
    btk = make("batchtopk")
    out = btk.training_forward(x, StepContext())
    assert out.code.l0().sum() <= 4 * 40
    btk.after_step_update(out)
    positive = out.code.vals.detach()[out.code.vals.detach() > 0]
    assert float(btk.running_threshold) == pytest.approx(float(positive.min()))


def test_batchtopk_inference_uses_the_threshold():
    sae = make("batchtopk").eval()
    sae.running_threshold.fill_(0.3)
    x = torch.randn(20, 16)
    f = sae.encode(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(f, pre * (pre > 0.3))
    assert torch.equal(sae.checkpoint_tensors()["threshold"], torch.full((64,), 0.3))


def test_matryoshka_levels_and_sum():
    torch.manual_seed(0)
    sae = make("matryoshka", prefix_sizes=[8, 32])
    x = torch.randn(16, 16)
    out = sae.training_forward(x, StepContext())
    assert set(out.terms) == {"mse_prefix_8", "mse_prefix_32", "mse"}
    assert torch.allclose(out.loss, sum(out.terms.values()))
    # The first level reconstructs from latents < 8 only.
    dense = out.code.to_dense().detach()
    dense[:, 8:] = 0
    first = sae.decode(dense)
    expected = (first - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(out.terms["mse_prefix_8"], expected, rtol=1e-4, atol=1e-5)


def test_gated_matches_the_definition():
    torch.manual_seed(0)
    sae = make("gated").eval()
    with torch.no_grad():
        sae.r_mag.normal_()
        sae.b_mag.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(10, 16)
    xc = x - sae.b_dec
    pi_gate = xc @ sae.W_enc + sae.b_gate
    pi_mag = xc @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    expected = (pi_gate > 0) * pi_mag.relu()
    torch.testing.assert_close(sae.encode(x), expected, rtol=1e-5, atol=1e-5)


def test_jumprelu_definition_and_fp32_threshold():
    sae = make("jumprelu", threshold_init=0.2).eval()
    assert sae.threshold.dtype == torch.float32
    x = torch.randn(10, 16)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(sae.encode(x), pre * (pre > 0.2), rtol=1e-5, atol=1e-6)


def test_jumprelu_ste_gradcheck_float64():
    # The z-derivatives are exact away from the jump: a standard gradcheck.
    z = torch.tensor([0.1, 0.5, 0.9, 1.3], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.7, 0.7, 0.3, 0.2], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: JumpReLUFn.apply(z, theta, 0.1), (z,))
    assert torch.autograd.gradcheck(lambda z: StepFn.apply(z, theta, 0.1), (z,))


def test_ste_threshold_gradients_match_the_rectangle_kernel_smoothing():
    # d/dθ of E_u[H(z − θ + u)], u ~ U(−ε/2, ε/2), is the Step pseudo-derivative exactly;
    # JumpReLU's is −θ/ε · K, the same smoothing applied to z·H with z ≈ θ.
    eps = 0.1
    z = torch.tensor([0.50, 0.52, 0.47, 0.9, 0.1], dtype=torch.float64)
    theta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    def smoothed_step(t):
        return ((z - t) / eps + 0.5).clamp(0, 1).sum()

    h = 1e-6
    numeric = (smoothed_step(theta.detach() + h) - smoothed_step(theta.detach() - h)) / (2 * h)
    StepFn.apply(z, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, numeric, rtol=1e-6, atol=1e-6)

    theta.grad = None
    JumpReLUFn.apply(z, theta, eps).sum().backward()
    inside = ((z - 0.5).abs() < eps / 2).sum()
    torch.testing.assert_close(theta.grad, -(0.5 / eps) * inside.to(torch.float64))


def test_jumprelu_threshold_gets_gradient_from_latents_just_below_it():
    sae = make("jumprelu", threshold_init=0.5, bandwidth=0.2)
    x = torch.randn(64, 16)
    out = sae.training_forward(x, StepContext())
    out.loss.backward()
    assert sae.threshold.grad is not None and sae.threshold.grad.abs().sum() > 0


def test_parallel_gradient_removal_and_renormalisation():
    sae = make("topk")
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.before_optimizer_step()
    dots = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert dots.abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3)
    sae.after_optimizer_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_dense_fallback_equals_sparse_path(monkeypatch):
    torch.manual_seed(0)
    sae = make("relu")
    x = torch.randn(24, 16)
    sparse = sae.training_forward(x, StepContext())
    sparse.loss.backward()
    g_sparse = sae.encoder_weight.grad.clone()
    sae.zero_grad()
    monkeypatch.setattr(ops, "DENSE_FRACTION", 0.0)
    dense = sae.training_forward(x, StepContext())
    dense.loss.backward()
    torch.testing.assert_close(dense.loss, sparse.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae.encoder_weight.grad, g_sparse, rtol=1e-4, atol=1e-6)


def test_impossible_configs_are_user_errors():
    with pytest.raises(UserError, match="k must be between 1 and d_sae"):
        make("topk", d_sae=8, k=16)
    with pytest.raises(
        UserError, match="known: batchtopk, gated, jumprelu, matryoshka, relu, topk"
    ):
        get_architecture("sparse-magic")
    with pytest.raises(UserError, match="unknown option"):
        make_config("relu", k=3)
    with pytest.raises(UserError, match="prefix_sizes"):
        make("matryoshka", d_sae=32, prefix_sizes=[8, 64])
