"""Cross-layer transcoders: a training step against a dense float64 definition, the inference
API against the same definition, and checkpoints that fold per-layer input and target scales."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saelab.base.errors import UserError
from saelab.sae import build_sae, load_sae, make_config, save_sae
from saelab.sae.base import StepContext

LAYERS = [3, 4, 5, 6]


def _clt(d_in=10, d_out=8, d_sae=24, k=3, aux_k=4, seed=5, layers=LAYERS):
    cfg = make_config(
        "clt",
        d_sae=d_sae,
        d_in=d_in,
        d_out=d_out,
        k=k,
        aux_k=aux_k,
        seed=seed,
        input_hooks=[f"blocks.{layer}.ln2.hook_normalized" for layer in layers],
        target_hooks=[f"blocks.{layer}.hook_mlp_out" for layer in layers],
    )
    return build_sae(cfg)


def _perturbed(clt, seed=1234):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clt.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return g


def _reference(ref, x, y, L, k, dead=None, aux_k=4):
    """The CLT's loss terms from its float64 parameters, written out densely."""
    n, d_in = x.shape[0], x.shape[1] // L
    d_out = y.shape[1] // L
    xs, ys = x.view(n, L, d_in), y.view(n, L, d_out)
    pres, feats = [], []
    for p in range(L):
        pre = xs[:, p] @ ref["encoder_weight"][p].t() + ref["b_enc"][p]
        top = torch.zeros_like(pre).scatter(1, pre.detach().topk(k, dim=1).indices, 1.0)
        pres.append(pre)
        feats.append(pre.relu() * top)
    y_hat = [ref["b_dec"][q].expand(n, d_out) for q in range(L)]
    for q in range(L):
        for p in range(q + 1):
            y_hat[q] = y_hat[q] + feats[p] @ ref[f"W_dec.{p}"][:, q - p]
    y_hat = torch.stack(y_hat, 1)
    per_layer = (y_hat - ys).pow(2).sum(-1).mean(0)
    aux = None
    if dead is not None:
        d_latent = pres[0].shape[1]
        residual = (ys - y_hat).detach()
        e_hat = torch.zeros_like(ys)
        n_dead = 0
        for p in range(L):
            cols = dead[p * d_latent : (p + 1) * d_latent].nonzero().squeeze(1)
            if not len(cols):
                continue
            n_dead += len(cols)
            pd = pres[p][:, cols]
            m = torch.zeros_like(pd).scatter(
                1, pd.detach().topk(min(aux_k, len(cols)), 1).indices, 1
            )
            f = pd.relu() * m
            for q in range(p, L):
                e_hat[:, q] = e_hat[:, q] + f @ ref[f"W_dec.{p}"][cols, q - p]
        scale = min(n_dead / (L * aux_k), 1.0)
        aux = scale * (e_hat - residual).pow(2).sum((-1, -2)).mean()
    return y_hat, per_layer, aux, feats


@pytest.mark.parametrize("d_sae", [16, 512], ids=["dense-path", "sparse-path"])
def test_clt_step_matches_a_dense_float64_definition(d_sae):
    """Loss = Σ_l' Σ_d (b_dec[l'] + Σ_{l<=l'} TopK(ReLU(x_l W_enc[l] + b_enc[l])) W_dec[l->l']
    − y_l')², mean over rows, plus AuxK over every layer's dead latents; gradients too."""
    L, k = len(LAYERS), 3
    clt = _clt(d_sae=d_sae, k=k)
    g = _perturbed(clt)
    x = torch.randn(48, L * 10, generator=g)
    y = torch.randn(48, L * 8, generator=g) + x[:, : L * 8] * 0.5
    dead = torch.zeros(L * d_sae, dtype=torch.bool)
    dead[::7] = True
    dead[d_sae : 2 * d_sae] = False  # a layer with no dead latent
    out = clt.training_forward(x, StepContext(dead_mask=dead, target=y))
    out.loss.backward()

    ref = {n: p.detach().double().requires_grad_() for n, p in clt.named_parameters()}
    y_hat, per_layer, aux, feats = _reference(ref, x.double(), y.double(), L, k, dead)
    (per_layer.sum() + clt.cfg.aux_coefficient * aux).backward()

    assert out.x_hat.shape == (48, L * 8)
    torch.testing.assert_close(out.x_hat.double(), y_hat.reshape(48, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["mse"].double(), per_layer.sum(), rtol=1e-5, atol=1e-6)
    for layer, value in zip(LAYERS, per_layer):
        torch.testing.assert_close(out.terms[f"mse_L{layer}"].double(), value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["aux_k"].double(), aux, rtol=1e-5, atol=1e-6)
    dense = torch.cat([f.detach() for f in feats], 1)
    torch.testing.assert_close(out.code.to_dense().double(), dense, rtol=1e-5, atol=1e-6)
    assert (out.code.l0() == L * k).all()
    for name, p in clt.named_parameters():
        torch.testing.assert_close(p.grad.double(), ref[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_inference_api_is_the_definition():
    """encode_layer / decoder / decode_to / bias compose to forward and decode, which equal the
    float64 definition; a layer's latents write only to itself and later layers."""
    L = len(LAYERS)
    clt = _clt(d_sae=20).eval()
    g = _perturbed(clt, 7)
    x = torch.randn(2, 5, L, 10, generator=g)
    ref = {n: p.detach().double() for n, p in clt.named_parameters()}
    y_ref, _, _, _ = _reference(
        ref, x.reshape(10, -1).double(), torch.zeros(10, L * 8).double(), L, 3
    )
    with torch.no_grad():
        y = clt(x)
        f = clt.encode(x)
        assert y.shape == (2, 5, L, 8) and f.shape == (2, 5, L, 20)
        torch.testing.assert_close(y.reshape(10, L, 8).double(), y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(clt.decode(f), y, rtol=1e-5, atol=1e-5)
        for q, dst in enumerate(LAYERS):
            parts = [clt.decode_to(src, dst, clt.encode_layer(src, x[..., p, :]))
                     for p, src in enumerate(LAYERS) if src <= dst]  # fmt: skip
            torch.testing.assert_close(
                sum(parts) + clt.bias(dst), y[..., q, :], rtol=1e-5, atol=1e-5
            )
    assert clt.layers == LAYERS and clt.n_layers == L and clt.d_latent == 20
    assert clt.d_sae == L * 20 and clt.d_in == 10 and clt.d_out == 8
    assert clt.input_hooks[1] == "blocks.4.ln2.hook_normalized"
    assert clt.target_hooks[-1] == "blocks.6.hook_mlp_out"
    assert clt.decoder(4, 6).shape == (20, 8) and clt.encoder(5).shape == (10, 20)
    pre = x[..., 2, :] @ clt.encoder(5) + clt.b_enc[clt.position(5)]
    torch.testing.assert_close(
        clt.encode_layer(5, x[..., 2, :]).max(-1).values, pre.max(-1).values.relu()
    )
    with pytest.raises(UserError, match="not to 3"):
        clt.decoder(4, 3)
    with pytest.raises(UserError, match="not in this cross-layer"):
        clt.encode_layer(9, x[..., 0, :])
    code = clt.encode_layer_sparse(5, x[..., 2, :].reshape(10, 10))
    assert code.idx.shape == (10, 3) and int(code.idx.max()) < 20


def test_write_gradient_is_autograd_of_the_decoders():
    """write_gradient(l, {l': ∂J/∂y_l'}) = ∂J/∂f_l for J a random linear read-out of every
    layer's reconstruction (autograd through decode, in float64)."""
    clt = _clt(d_sae=20).double()
    g = _perturbed(clt, 5)
    f = torch.randn(7, len(LAYERS), 20, generator=g, dtype=torch.float64, requires_grad=True)
    readout = torch.randn(7, len(LAYERS), 8, generator=g, dtype=torch.float64)
    (clt.decode(f) * readout).sum().backward()
    grads = {layer: readout[:, q] for q, layer in enumerate(LAYERS)}
    for p, layer in enumerate(LAYERS):
        torch.testing.assert_close(clt.write_gradient(layer, grads), f.grad[:, p])
    only_last = clt.write_gradient(3, {6: readout[:, 3]})
    torch.testing.assert_close(only_last, readout[:, 3] @ clt.decoder(3, 6).t())


def test_centre_init_centres_every_layers_pre_activations():
    clt = _clt(d_sae=20)
    g = _perturbed(clt, 9)
    x = torch.randn(200, len(LAYERS) * 10, generator=g) + torch.arange(len(LAYERS) * 10) * 0.3
    clt.init_sparsity_(x)
    for p in range(len(LAYERS)):
        xp = x[:, p * 10 : (p + 1) * 10].double()
        pre = xp @ clt.W_enc[p].double() + clt.b_enc[p].double()
        centred = (xp - xp.mean(0)) @ clt.W_enc[p].double()
        torch.testing.assert_close(pre, centred, rtol=1e-5, atol=1e-5)


def test_optimizer_hooks_keep_each_latents_decoders_unit_norm():
    clt = _clt(d_sae=12)
    g = _perturbed(clt, 3)
    for w in clt.W_dec:
        w.grad = torch.randn(w.shape, generator=g)
    clt.after_optimizer_step()
    clt.before_optimizer_step()
    for w in clt.W_dec:
        rows, grads = w.detach().flatten(1), w.grad.flatten(1)
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(len(rows)))
        torch.testing.assert_close((rows * grads).sum(1), torch.zeros(len(rows)), atol=1e-5, rtol=0)


def test_checkpoint_folds_per_layer_scales(tmp_path):
    """Trained on x_l·s_in[l] and y_l·s_out[l], the saved CLT maps raw inputs to raw outputs:
    loaded(x)[l] = clt(x·s_in)[l] / s_out[l], with the same latents."""
    L = len(LAYERS)
    clt = _clt(d_sae=20).eval()
    g = _perturbed(clt, 11)
    s_in, s_out = [0.37, 0.5, 1.3, 2.0], [2.5, 0.2, 0.9, 4.0]
    save_sae(clt, tmp_path, s_in, {"hook_name": clt.input_hooks[0]}, s_out)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    block = cfg["saelab"]
    assert cfg["architecture"] == "clt" and block["architecture"] == "clt"
    assert cfg["layers"] == LAYERS and cfg["d_sae"] == L * 20
    assert block["input_hooks"] == clt.input_hooks and block["target_hooks"] == clt.target_hooks
    assert block["folded_input_scale"] == s_in and block["folded_target_scale"] == s_out
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert weights["W_enc"].shape == (L, 10, 20) and weights["W_dec_1"].shape == (20, L - 1, 8)

    loaded = load_sae(tmp_path)
    assert type(loaded) is type(clt) and loaded.layers == LAYERS
    raw = torch.randn(6, L, 10, generator=g) * 5
    scaled = raw * torch.tensor(s_in)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(raw), clt.encode(scaled), rtol=1e-4, atol=1e-5)
        want = clt(scaled) / torch.tensor(s_out)[:, None]
        torch.testing.assert_close(loaded(raw), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            loaded.decode_to(4, 6, loaded.encode_layer(4, raw[:, 1])),
            clt.decode_to(4, 6, clt.encode_layer(4, scaled[:, 1])) / s_out[3],
            rtol=1e-4,
            atol=1e-4,
        )


def test_bad_clt_configs_are_user_errors():
    hooks = {"input_hooks": ["blocks.1.a", "blocks.2.a"], "target_hooks": ["blocks.1.b"]}
    with pytest.raises(UserError, match="one target hook per input hook"):
        make_config("clt", d_sae=8, k=2, **hooks).validate()
    with pytest.raises(UserError, match="from the first layer to the last"):
        make_config(
            "clt", d_sae=8, k=2, input_hooks=["blocks.2.a", "blocks.1.a"],
            target_hooks=["blocks.2.b", "blocks.1.b"],
        ).validate()  # fmt: skip
    with pytest.raises(UserError, match="both input_hooks and target_hooks"):
        make_config("clt", d_sae=8, k=2, input_hooks=["blocks.1.a"]).validate()
    with pytest.raises(UserError, match="template with"):
        make_config("clt", d_sae=8, k=2, target_hook="blocks.1.hook_mlp_out").validate()
    with pytest.raises(UserError, match="apply_b_dec_to_input"):
        make_config("clt", d_sae=8, k=2, apply_b_dec_to_input=True).validate()
    with pytest.raises(UserError, match="no target"):
        _clt().training_forward(torch.randn(4, 40), StepContext())
