"""Architectures: shapes, selection semantics, loss terms, STE gradients, config checks."""

from __future__ import annotations

import pytest
import torch

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.jumprelu import JumpReLUFn, StepFn
from saelab.sae.base import StepContext
from saelab.sae.registry import REGISTRY, build_sae, get_architecture, make_config

SAE_ARCHS = sorted(a for a in REGISTRY if "transcoder" not in a and a != "clt")
"""The architectures that reconstruct their input (tests/sae/test_transcoder.py and
test_clt.py cover the transcoders, which read one hook and reconstruct another)."""

TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")


def make(arch: str, d_sae: int = 64, d_in: int = 16, **kw):
    if arch in TOPK_FAMILY:
        kw.setdefault("k", 4)
    return build_sae(make_config(arch, d_sae=d_sae, **kw), d_in)


@pytest.mark.parametrize("arch", SAE_ARCHS)
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


@pytest.mark.parametrize("arch", SAE_ARCHS)
def test_training_forward_terms_and_backward(arch):
    torch.manual_seed(0)
    sae = make(arch)
    x = torch.randn(32, 16)
    grad = torch.randn(32, 16) if getattr(sae, "needs_lm_grad", False) else None  # gsae
    out = sae.training_forward(x, StepContext(dead_mask=torch.rand(64) < 0.3, grad=grad))
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


@pytest.mark.parametrize("aux", [0.0, 0.5], ids=["", "auxk"])
@pytest.mark.parametrize("pre_act", [0.0, 5.0], ids=["", "pre-act-loss"])
@pytest.mark.parametrize("dense", [False, True], ids=["sparse-path", "dense-path"])
def test_jumprelu_training_loss_and_gradients_match_a_dense_float64_definition(
    monkeypatch, dense, pre_act, aux
):
    """The split selection (latents above θ decoded, those within ε/2 below only probed)
    gives the loss and every gradient of the whole dense computation: z = ReLU(pre) for all
    latents, f = JumpReLU(z), L0 by the step pseudo-derivative, in float64; with the
    pre-activation loss, plus λ_p · mean_rows,i ReLU(θ_i − pre_i) ‖W_dec,i‖ (b_dec held
    constant in that term); with AuxK, plus α · min(1, dead / k_aux) · the squared error of
    the detached residual x − x̂ reconstructed by each row's top-k_aux ReLU(pre) of the dead
    latents (thresholds play no part there)."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    sae = make(
        "jumprelu", threshold_init=0.3, bandwidth=0.2, l0_coefficient=0.05,
        pre_act_coefficient=pre_act, aux_coefficient=aux, aux_k=6,
    )  # fmt: skip
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(40, 16, generator=g)
    dead = torch.randperm(64, generator=g)[:20].sort().values
    dead_mask = torch.zeros(64, dtype=torch.bool)
    dead_mask[dead] = True
    monkeypatch.setattr(ops, "DENSE_FRACTION", 0.0 if dense else 1.0)
    out = sae.training_forward(x, StepContext(dead_mask=dead_mask))
    out.loss.backward()
    assert ("aux_k" in out.terms) == (aux > 0)

    ref = {n: p.detach().double().requires_grad_() for n, p in sae.named_parameters()}
    z = ((x.double() - ref["b_dec"]) @ ref["encoder_weight"].t() + ref["b_enc"]).relu()
    theta = ref["threshold"].expand_as(z)
    x_hat = JumpReLUFn.apply(z, theta, 0.2) @ ref["W_dec"] + ref["b_dec"]
    mse = (x_hat - x.double()).pow(2).sum(-1).mean()
    loss = mse + 0.05 * StepFn.apply(z, theta, 0.2).sum(-1).mean()
    pre = (x.double() - ref["b_dec"].detach()) @ ref["encoder_weight"].t() + ref["b_enc"]
    gap = (ref["threshold"] - pre).relu()
    assert (gap > 0).any() and (gap == 0).any(), f"seed {seed}"
    loss = loss + pre_act * (gap * ref["W_dec"].norm(dim=1)).mean()
    z_dead = z[:, dead]
    chosen = torch.zeros_like(z_dead).scatter(1, z_dead.topk(6).indices, 1.0)
    e_hat = (z_dead * chosen) @ ref["W_dec"][dead]
    residual = (x.double() - x_hat).detach()
    loss = loss + aux * (e_hat - residual).pow(2).sum(-1).mean()  # min(1, 20 / 6) = 1
    loss.backward()
    near = ((z - theta).abs() < 0.1) & (z <= theta)
    assert near.any(), f"no latent just below θ to test (seed {seed})"
    torch.testing.assert_close(out.loss.double(), loss, rtol=1e-5, atol=1e-6)
    for name, p in sae.named_parameters():
        grad = p.grad.to_dense() if p.grad.is_sparse else p.grad  # AuxK's rows are sparse
        torch.testing.assert_close(
            grad.double(), ref[name].grad, rtol=1e-4, atol=1e-5, msg=f"{name}, seed {seed}"
        )


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
        UserError,
        match="known: batchtopk, clt, feature_choice, gated, gsae, jumprelu, matryoshka, mp, "
        "mutual_choice, relu, topk",
    ):
        get_architecture("sparse-magic")
    with pytest.raises(UserError, match="unknown option"):
        make_config("relu", k=3)
    with pytest.raises(UserError, match="prefix_sizes"):
        make("matryoshka", d_sae=32, prefix_sizes=[8, 64])
    with pytest.raises(UserError, match="init_l0 must be between 0 and d_sae"):
        make("jumprelu", d_sae=32, init_l0=32)
    with pytest.raises(UserError, match="unknown option"):
        make_config("topk", init_l0=3)  # a count, not a threshold: nothing to start sparse


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_gather_and_bands_match_float64(monkeypatch, bias, shifted):
    """The dense paths of `ops.gather` (reusing `pre`, or not; with a differentiable shift,
    or not) and `ops.decode_bands` against float64 autograd through the plain dense formulas;
    duplicate idx (padding) included."""
    monkeypatch.setattr(ops, "DENSE_FRACTION", 0.0)
    g = torch.Generator().manual_seed(1)
    n, d_in, d_sae, k = 12, 8, 20, 6
    x = torch.randn(n, d_in, generator=g, requires_grad=True)
    w_rows = torch.randn(d_sae, d_in, generator=g, requires_grad=True)
    b = torch.randn(d_sae, generator=g, requires_grad=True) if bias else None
    shift = torch.randn(d_in, generator=g, requires_grad=True) if shifted else None
    idx = torch.randint(0, d_sae, (n, k), generator=g)
    idx[:, -2:] = 0  # padding repeats latent 0
    grad = torch.randn(n, k, generator=g)
    leaves = [t for t in (x, w_rows, b, shift) if t is not None]
    refs = {id(t): t.detach().double().requires_grad_() for t in leaves}
    x64, w64 = refs[id(x)], refs[id(w_rows)]
    xc64 = x64 - refs[id(shift)] if shifted else x64
    pre64 = xc64 @ w64.t() + (refs[id(b)] if bias else 0)
    pre64.gather(1, idx).backward(grad.double())
    for with_pre in (True, False):
        xc = x.detach() - shift.detach() if shifted else x
        pre = ops.preacts(xc, w_rows.t(), b) if with_pre else None
        out = ops.gather(x, w_rows.t(), b, idx, pre=pre, shift=shift)
        torch.testing.assert_close(
            out.double(), pre64.gather(1, idx).detach(), rtol=1e-5, atol=1e-5
        )
        out.backward(grad)
        for t in leaves:
            torch.testing.assert_close(t.grad.double(), refs[id(t)].grad, rtol=1e-5, atol=1e-5)
            t.grad = None

    bounds = [3, 7, 20]
    vals = torch.randn(n, k, generator=g, requires_grad=True)
    w_dec = torch.randn(d_sae, d_in, generator=g, requires_grad=True)
    parts = ops.decode_bands(idx, vals, w_dec, bounds)
    gp = torch.randn(parts.shape, generator=g)
    parts.backward(gp)
    v64, wd64 = vals.detach().double().requires_grad_(), w_dec.detach().double().requires_grad_()
    ref, lower = [], 0
    for upper in bounds:
        band = ((idx >= lower) & (idx < upper)).double()
        ref.append(torch.zeros(n, d_sae).double().scatter_add(1, idx, v64 * band) @ wd64)
        lower = upper
    ref = torch.stack(ref, 1)
    ref.backward(gp.double())
    torch.testing.assert_close(parts.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vals.grad.double(), v64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_dec.grad.double(), wd64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated", "matryoshka"])
def test_dense_path_matches_float64_sparse_path(monkeypatch, arch):
    """Loss and every gradient of a training step through the dense paths (float32) equal
    those of the sparse kernels in float64."""
    torch.manual_seed(0)
    sae = make(arch)
    ref = make(arch).double()
    ref.load_state_dict(sae.state_dict())
    x = torch.randn(24, 16)
    monkeypatch.setattr(ops, "DENSE_FRACTION", 1.0)  # never dense
    out_ref = ref.training_forward(x.double(), StepContext())
    out_ref.loss.backward()
    monkeypatch.setattr(ops, "DENSE_FRACTION", 0.0)  # always dense
    out = sae.training_forward(x, StepContext())
    out.loss.backward()
    torch.testing.assert_close(out.loss.double(), out_ref.loss.double(), rtol=1e-5, atol=1e-6)
    for (name, p), p_ref in zip(sae.named_parameters(), ref.parameters()):
        if p_ref.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        torch.testing.assert_close(p.grad.double(), p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "n_dead,dead_bias",
    [(3, 0.0), (40, 0.0), (64, 0.0), (40, -2.0), (64, -2.0), (40, -100.0)],
    ids=[
        "few-dead",
        "many-dead",
        "all-dead",
        "mostly-negative",
        "all-dead-mostly-negative",
        "none-positive",
    ],
)
def test_aux_k_matches_float64_definition(n_dead, dead_bias):
    """AuxK (residual reconstructed by each row's top-k_aux dead latents) and its gradients
    to every parameter equal a dense float64 computation of the definition, on the dense
    path over the dead latents' block (few or many dead) and the sparse one (all dead); with
    the dead latents' biases lowered, most selected pre-activations are negative (the
    selection is cut to the positive ones) or none is positive (a constant loss)."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    sae = make("topk", aux_k=8)
    dead = torch.randperm(64, generator=g)[:n_dead].sort().values
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        sae.b_enc[dead] += dead_bias
    x = torch.randn(32, 16, generator=g)
    residual = torch.randn(32, 16, generator=g)
    dead_mask = torch.zeros(64, dtype=torch.bool)
    dead_mask[dead] = True

    pre = ops.preacts(sae.center(x), sae.W_enc, sae.b_enc)
    loss = sae.aux_k_loss(x, pre, residual, dead_mask)
    if loss.requires_grad:
        loss.backward()

    ref = {n: p.detach().double().requires_grad_() for n, p in sae.named_parameters()}
    pre_ref = (x.double() - ref["b_dec"]) @ ref["encoder_weight"].t() + ref["b_enc"]
    pre_dead = pre_ref[:, dead]
    k_aux = min(8, n_dead)
    chosen = torch.zeros_like(pre_dead).scatter(1, pre_dead.topk(k_aux).indices, 1.0)
    e_hat = (pre_dead.relu() * chosen) @ ref["W_dec"][dead]
    loss_ref = min(n_dead / 8, 1.0) * (e_hat - residual.double()).pow(2).sum(-1).mean()
    loss_ref.backward()
    msg = f"seed {seed}"
    torch.testing.assert_close(loss.double(), loss_ref, rtol=1e-5, atol=1e-6, msg=msg)
    for name, p in sae.named_parameters():
        # AuxK's gradients are row-sparse (`ops.rows`); the trainer makes them dense
        grad = torch.zeros_like(p) if p.grad is None else p.grad.to_dense()
        torch.testing.assert_close(
            grad.double(), ref[name].grad, rtol=1e-4, atol=1e-6, msg=f"{name}, {msg}"
        )


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_topk_training_step_matches_float64_definition(monkeypatch, fused):
    """A TopK training step (fused matmul + top-k, AuxK's dead columns taken in the same
    pass, one segment sort shared by the encoder's and decoder's backward) gives the loss
    and gradients of a dense float64 computation of MSE + AuxK; and the same with the
    fused path disabled."""
    if fused:
        monkeypatch.delenv("SAELAB_DISABLE_FUSED", raising=False)
    else:
        monkeypatch.setenv("SAELAB_DISABLE_FUSED", "1")
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    sae = make("topk", d_sae=512, aux_k=8)  # 512 latents: wide enough for the chunked top-k
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(48, 16, generator=g)
    dead = torch.randperm(512, generator=g)[:20].sort().values
    dead_mask = torch.zeros(512, dtype=torch.bool)
    dead_mask[dead] = True
    out = sae.training_forward(x, StepContext(dead_mask=dead_mask))
    out.loss.backward()

    ref = {n: p.detach().double().requires_grad_() for n, p in sae.named_parameters()}
    pre = (x.double() - ref["b_dec"]) @ ref["encoder_weight"].t() + ref["b_enc"]
    chosen = torch.zeros_like(pre).scatter(1, pre.topk(4).indices, 1.0)
    x_hat = (pre.relu() * chosen) @ ref["W_dec"] + ref["b_dec"]
    mse = (x_hat - x.double()).pow(2).sum(-1).mean()
    residual = (x.double() - x_hat).detach()
    pre_dead = pre[:, dead]
    chosen_dead = torch.zeros_like(pre_dead).scatter(1, pre_dead.topk(8).indices, 1.0)
    e_hat = (pre_dead.relu() * chosen_dead) @ ref["W_dec"][dead]
    aux = min(20 / 8, 1.0) * (e_hat - residual).pow(2).sum(-1).mean()
    (mse + sae.cfg.aux_coefficient * aux).backward()
    msg = f"seed {seed}"
    torch.testing.assert_close(out.terms["mse"].double(), mse, rtol=1e-5, atol=1e-6, msg=msg)
    torch.testing.assert_close(out.terms["aux_k"].double(), aux, rtol=1e-5, atol=1e-6, msg=msg)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(
            p.grad.double(), ref[name].grad, rtol=1e-4, atol=1e-6, msg=f"{name}, {msg}"
        )
    assert out.code.shared is not None and out.code.shared._plan is not None, "no shared sort"
