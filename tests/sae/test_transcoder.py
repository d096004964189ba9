"""Transcoders: a training step against a dense float64 definition, and checkpoints that fold
both the input's and the target's training scales."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saelab.base.errors import UserError
from saelab.sae import build_sae, load_sae, make_config, save_sae
from saelab.sae.base import StepContext


def _transcoder(d_in=16, d_out=12, d_sae=512, skip=False, k=4, aux_k=8, seed=3):
    cfg = make_config(
        "transcoder",
        d_sae=d_sae,
        d_in=d_in,
        d_out=d_out,
        k=k,
        aux_k=aux_k,
        skip=skip,
        seed=seed,
        target_hook="blocks.0.hook_mlp_out",
        input_hook="blocks.0.ln2.hook_normalized",
    )
    return build_sae(cfg)


def _perturbed(tc, seed=1234):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return g


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
@pytest.mark.parametrize("d_sae", [24, 512], ids=["dense-path", "sparse-path"])
def test_transcoder_step_matches_a_dense_float64_definition(skip, d_sae):
    """Loss = Σ_d (TopK(ReLU(x W_enc + b_enc)) W_dec + b_dec + x W_skip − y)², mean over
    rows, plus AuxK: the dead latents' top-k_aux reconstructing the detached target residual."""
    tc = _transcoder(d_sae=d_sae, skip=skip)
    g = _perturbed(tc)
    x = torch.randn(64, 16, generator=g)
    y = torch.randn(64, 12, generator=g) + x[:, :12] * 0.5
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::5] = True
    out = tc.training_forward(x, StepContext(dead_mask=dead, target=y))
    out.loss.backward()

    ref = {n: p.detach().double().requires_grad_() for n, p in tc.named_parameters()}
    xd, yd = x.double(), y.double()
    pre = xd @ ref["encoder_weight"].t() + ref["b_enc"]  # no pre-bias
    top = torch.zeros_like(pre).scatter(1, pre.detach().topk(4, dim=1).indices, 1.0)
    y_hat = (pre.relu() * top) @ ref["W_dec"] + ref["b_dec"]
    if skip:
        y_hat = y_hat + xd @ ref["W_skip"]
    mse = (y_hat - yd).pow(2).sum(-1).mean()
    cols = dead.nonzero().squeeze(1)
    pre_dead = pre[:, cols]
    top_dead = torch.zeros_like(pre_dead).scatter(
        1, pre_dead.detach().topk(min(8, len(cols)), dim=1).indices, 1.0
    )
    e_hat = (pre_dead.relu() * top_dead) @ ref["W_dec"][cols]
    aux = min(len(cols) / 8, 1.0) * (e_hat - (yd - y_hat).detach()).pow(2).sum(-1).mean()
    (mse + tc.cfg.aux_coefficient * aux).backward()

    assert out.x_hat.shape == (64, 12)
    torch.testing.assert_close(out.terms["mse"].double(), mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["aux_k"].double(), aux, rtol=1e-5, atol=1e-6)
    names = {n for n, _ in tc.named_parameters()}
    assert ("W_skip" in names) == skip
    for name, p in tc.named_parameters():
        torch.testing.assert_close(p.grad.double(), ref[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_inference_api_is_the_contract():
    tc = _transcoder(skip=True, d_sae=40).eval()
    g = _perturbed(tc, 7)
    x = torch.randn(3, 5, 16, generator=g)
    f = tc.encode(x)
    assert f.shape == (3, 5, 40) and ((f != 0).sum(-1) <= 4).all()
    torch.testing.assert_close(tc.decode(f), f @ tc.W_dec + tc.b_dec)
    torch.testing.assert_close(tc(x), tc.decode(f) + x @ tc.W_skip, rtol=1e-5, atol=1e-5)
    assert tc.W_enc.shape == (16, 40) and tc.W_dec.shape == (40, 12)
    assert tc.W_skip.shape == (16, 12) and tc.skip_out(x).shape == (3, 5, 12)
    assert tc.input_hook == "blocks.0.ln2.hook_normalized"
    assert tc.target_hook == "blocks.0.hook_mlp_out"
    assert not tc.cfg.apply_b_dec_to_input
    plain = _transcoder(d_sae=40)
    assert plain.W_skip is None and (plain.skip_out(x) == 0).all()


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
def test_checkpoint_folds_both_scales(tmp_path, skip):
    """Trained on x·s_in and y·s_out, the saved transcoder maps raw x to raw y:
    loaded(x) = tc(x·s_in) / s_out, with the same latents."""
    tc = _transcoder(d_sae=40, skip=skip).eval()
    g = _perturbed(tc, 11)
    s_in, s_out = 0.37, 2.5
    save_sae(tc, tmp_path, s_in, {"hook_name": "blocks.0.ln2.hook_normalized"}, s_out)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    block = cfg["saelab"]
    assert cfg["hook_name"] == "blocks.0.ln2.hook_normalized"
    assert block["target_hook"] == "blocks.0.hook_mlp_out" and block["d_out"] == 12
    assert block["folded_input_scale"] == s_in and block["folded_target_scale"] == s_out
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert ("W_skip" in weights) == skip and weights["W_dec"].shape == (40, 12)

    loaded = load_sae(tmp_path)
    assert type(loaded) is type(tc) and loaded.d_out == 12
    assert loaded.input_hook == "blocks.0.ln2.hook_normalized"
    assert loaded.target_hook == "blocks.0.hook_mlp_out"
    raw = torch.randn(30, 16, generator=g) * 5
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(raw), tc.encode(raw * s_in), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded(raw), tc(raw * s_in) / s_out, rtol=1e-4, atol=1e-4)


def test_bad_transcoder_configs_are_user_errors():
    with pytest.raises(UserError, match="target_hook"):
        make_config("transcoder", d_sae=8, k=2).validate()
    with pytest.raises(UserError, match="apply_b_dec_to_input"):
        make_config(
            "transcoder", d_sae=8, k=2, target_hook="t", apply_b_dec_to_input=True
        ).validate()
    with pytest.raises(UserError, match="no target"):
        _transcoder(d_sae=24).training_forward(torch.randn(4, 16), StepContext())


def test_centre_init_centres_the_first_pre_activations():
    """`centre_init`: on the sample it starts from, every latent's pre-activation has mean 0
    (an SAE's pre-bias does this by subtracting b_dec from the input); float64 reference."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(256, 16, generator=g) * torch.linspace(0.1, 10, 16) + 3
    for on in (True, False):
        tc = _transcoder(d_sae=40)
        tc.cfg.centre_init = on
        tc.init_sparsity_(x)
        pre = x.double() @ tc.W_enc.double() + tc.b_enc.double()
        assert (pre.mean(0).abs().max() < 1e-4) == on
