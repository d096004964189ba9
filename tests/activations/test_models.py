"""Model loading: agreement with plain transformers, hook conventions, bad specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saelab.activations.models import load_model, resolve_model_folder
from saelab.base.errors import UserError

# The bridge runs the HF module but may pick another attention kernel; fp32 logits of
# magnitude ~20 agree to this absolute tolerance (measured max ≈ 3e-4).
LOGIT_ATOL = 2e-3


def test_logits_agree_with_plain_transformers(model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    ids = torch.randint(0, model.d_vocab, (3, 40), generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        ref = hf(ids).logits
        ours = model.bridge(ids, return_type="logits")
    assert ours.shape == ref.shape == (3, 40, model.d_vocab)
    assert (ours - ref).abs().max().item() < LOGIT_ATOL


def test_greedy_completion_knows_paris(model):
    tok = model.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(6):
            nxt = model.bridge(ids, return_type="logits")[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    assert "Paris" in tok.decode(ids[0])


def test_hook_names_follow_transformer_lens(model):
    names = set(model.hook_names)
    assert model.n_layers == 30 and model.d_model == 576
    for layer in (0, 8, 29):
        for hook in (
            "hook_resid_pre",
            "hook_resid_post",
            "hook_mlp_out",
            "hook_attn_out",
            "hook_resid_mid",
        ):
            assert f"blocks.{layer}.{hook}" in names


def test_activations_match_hf_hidden_states(model):
    """blocks.L.hook_resid_post is the HF model's hidden state after layer L."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    ids = torch.randint(0, model.d_vocab, (2, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
        _, cache = model.bridge.run_with_cache(
            ids, names_filter=["blocks.5.hook_resid_post"], stop_at_layer=6
        )
    torch.testing.assert_close(cache["blocks.5.hook_resid_post"], hidden[6], atol=1e-3, rtol=1e-4)


def test_stop_layer(model):
    assert model.stop_layer(["blocks.3.hook_resid_post", "blocks.8.hook_mlp_out"]) == 9
    assert model.stop_layer(["blocks.29.hook_resid_post"]) is None
    assert model.stop_layer(["ln_final.hook_normalized"]) is None


def test_unknown_hook_suggests_nearest(model):
    with pytest.raises(UserError, match=r"did you mean .*blocks\.8\.hook_resid_post"):
        model.validate_hooks(["blocks.8.hook_resid_pst"])


def test_hook_beyond_layers(model):
    with pytest.raises(UserError, match=r"beyond the model.*30 layers"):
        model.validate_hooks(["blocks.31.hook_resid_post"])


@pytest.mark.parametrize("spec", ["no-such-model", "/nonexistent/model.gguf", "./no/such/folder/"])
def test_unknown_model(spec):
    with pytest.raises(UserError):
        resolve_model_folder(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))


def test_a_model_loads_from_the_repository_root():
    """transformers (5.25 on) requires Hugging Face's `kernels` and imports it by that name;
    Python started in the repository root finds the folder `kernels/` (saelab.kernels) first,
    which hands the name over (tests/test_layers.py), so a model loads there too."""
    code = (
        "import saelab.kernels, saelab.circuits, transformers\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "is_kernels_available()\n"
        "assert hasattr(saelab.kernels, 'sparse_decode')\n"
        "from saelab.activations.models import load_model\n"
        "m = load_model('smollm2-135m')\n"
        "print('ok', m.d_model)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok 576" in out.stdout
