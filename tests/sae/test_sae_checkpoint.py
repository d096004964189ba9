"""Checkpoint folders (SAELens layout, scale folded) and the importers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.base.errors import UserError
from saelab.sae import build_sae, load_sae, make_config, save_sae
from saelab.sae.checkpoint import load_any
from saelab.sae.importers import load_gemma_scope, load_saelens, load_sparsify
from saelab.sae.registry import REGISTRY

SAE_ARCHS = sorted(a for a in REGISTRY if "transcoder" not in a and a != "clt")
"""The architectures that reconstruct their input (tests/sae/test_transcoder.py and
test_clt.py cover the transcoders, which read one hook and reconstruct another)."""


def _trained_like(arch: str, d_in: int = 12, d_sae: int = 40):
    kw = {"k": 5} if arch in ("topk", "batchtopk", "matryoshka") else {}
    sae = build_sae(make_config(arch, d_sae=d_sae, **kw), d_in)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(0.05 + 0.1 * torch.rand(d_sae, generator=g))
        if arch in ("batchtopk", "matryoshka"):
            sae.running_threshold.fill_(0.08)
    return sae.eval()


@pytest.mark.parametrize("arch", SAE_ARCHS)
def test_save_load_round_trip_folds_the_input_scale(tmp_path, arch):
    sae = _trained_like(arch)
    scale = 0.37
    save_sae(sae, tmp_path, scale=scale, meta={"hook_name": "h", "model_name": "m"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["saelab"]["architecture"] == arch and cfg["hook_name"] == "h"
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert weights["W_enc"].shape == (12, 40) and weights["W_dec"].shape == (40, 12)
    if arch in ("jumprelu", "batchtopk", "matryoshka"):
        assert "threshold" in weights and cfg["architecture"] == "jumprelu"
    if arch == "gated":
        assert {"b_gate", "r_mag", "b_mag"} <= set(weights) and "b_enc" not in weights

    loaded = load_sae(tmp_path)
    assert type(loaded) is type(sae)
    raw = torch.randn(30, 12) * 5
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode(raw), sae.encode(raw * scale), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(loaded(raw), sae(raw * scale) / scale, rtol=1e-4, atol=1e-4)


def test_load_checks_architecture_and_version(tmp_path):
    save_sae(_trained_like("topk"), tmp_path)
    with pytest.raises(UserError, match="holds a 'topk' SAE, not 'jumprelu'"):
        load_sae(tmp_path, architecture="jumprelu")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["saelab"]["format_version"] = 99
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="format version 99"):
        load_sae(tmp_path)
    with pytest.raises(UserError, match="not an SAE folder"):
        load_sae(tmp_path / "nowhere")


def _write_saelens(folder, arch, tensors, **extra):
    folder.mkdir()
    cfg = {
        "architecture": arch,
        "d_in": tensors["W_enc"].shape[0],
        "d_sae": tensors["W_enc"].shape[1],
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.0.hook_resid_pre"},
        **extra,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))


def _random_weights(d_in=10, d_sae=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saelens_importer(tmp_path, arch):
    w = _random_weights()
    x = torch.randn(8, 10)
    extra = {}
    if arch == "topk":
        extra["k"] = 4
    if arch == "jumprelu":
        w["threshold"] = torch.full((30,), 0.05)
    if arch == "gated":
        w["b_gate"] = w.pop("b_enc")
        w["r_mag"] = torch.randn(30) * 0.2
        w["b_mag"] = torch.randn(30) * 0.1
    _write_saelens(tmp_path / "s", arch, w, **extra)
    sae = load_saelens(tmp_path / "s")
    assert load_sae(tmp_path / "s").architecture == sae.architecture  # no saelab block: dispatch
    xc = x - w["b_dec"]
    if arch == "gated":
        pi_gate = xc @ w["W_enc"] + w["b_gate"]
        pi_mag = xc @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
        f = (pi_gate > 0) * pi_mag.relu()
    else:
        pre = xc @ w["W_enc"] + w["b_enc"]
        if arch == "standard":
            f = pre.relu()
        elif arch == "jumprelu":
            f = pre.relu() * (pre > w["threshold"])
        else:
            vals, idx = pre.topk(4, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), f @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5)


def test_gemma_scope_importer(tmp_path):
    w = {k: v.numpy() for k, v in _random_weights(seed=3).items()}
    w["threshold"] = np.full(30, 0.04, dtype=np.float32)
    np.savez(tmp_path / "params.npz", **w)
    sae = load_gemma_scope(tmp_path / "params.npz")
    assert load_any(tmp_path).architecture == "jumprelu"
    x = torch.randn(8, 10)
    pre = x @ torch.from_numpy(w["W_enc"]) + torch.from_numpy(w["b_enc"])  # no b_dec subtraction
    f = pre.relu() * (pre > 0.04)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), f, rtol=1e-5, atol=1e-5)
        expected = f @ torch.from_numpy(w["W_dec"]) + torch.from_numpy(w["b_dec"])
        torch.testing.assert_close(sae(x), expected, rtol=1e-5, atol=1e-5)
    np.savez(tmp_path / "bad.npz", W_enc=w["W_enc"])
    with pytest.raises(UserError, match="lacks"):
        load_gemma_scope(tmp_path / "bad.npz")


def test_sparsify_importer(tmp_path):
    w = _random_weights(seed=5)
    folder = tmp_path / "layers.3"
    folder.mkdir()
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "expansion_factor": 3,
                "normalize_decoder": True,
                "num_latents": 30,
                "k": 4,
                "multi_topk": False,
                "d_in": 10,
            }
        )
    )
    save_file(
        {
            "encoder.weight": w["W_enc"].t().contiguous(),
            "encoder.bias": w["b_enc"],
            "W_dec": w["W_dec"],
            "b_dec": w["b_dec"],
        },
        str(folder / "sae.safetensors"),
    )
    sae = load_sparsify(folder)
    assert load_any(folder).architecture == "topk"
    x = torch.randn(8, 10)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()
    vals, idx = pre.topk(4, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, vals)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), f @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5)
