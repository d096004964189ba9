"""Fixtures for the circuit tests: seeded random SAEs (exactness) and a small real task."""

from __future__ import annotations

import pytest
import torch

RANDOM_HOOKS = [
    "blocks.1.hook_resid_post",
    "blocks.2.hook_attn_out",
    "blocks.2.hook_mlp_out",
    "blocks.3.hook_resid_post",
]


def random_sae(d_in: int, d_sae: int, k: int, seed: int):
    """A TopK SAE with seeded random weights and biases (its error node is large: fine for
    exactness tests, which must hold for any SAE)."""
    from saelab.sae.registry import build_sae, make_config

    sae = build_sae(make_config("topk", d_sae=d_sae, k=k, seed=seed), d_in)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        sae.encoder_weight.add_(0.3 * torch.randn(sae.encoder_weight.shape, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    return sae.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests run many tiny forwards; one thread avoids contention on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def random_spliced(model):
    from saelab.circuits.splice import SplicedModel

    saes = {h: random_sae(model.d_model, 128, 6, seed=i) for i, h in enumerate(RANDOM_HOOKS)}
    return SplicedModel(model, saes)


@pytest.fixture(scope="module")
def sva_small(model):
    from saelab.activations.corpus import bos_token_id
    from saelab.circuits.tasks import load_task

    return load_task("sva-pp", model.tokenizer, bos_token_id(model.tokenizer), n=6, seed=3)


STORE_HOOKS = ["blocks.2.hook_resid_post", "blocks.4.hook_mlp_out"]


def train_saes(store: str, out, hooks=STORE_HOOKS, d_sae: int = 256, k: int = 16, tokens=6000):
    """Small TopK SAEs trained quickly on a real store, one folder per hook."""
    from pathlib import Path

    from saelab.activations.loader import ActivationLoader
    from saelab.sae.registry import make_config
    from saelab.sae.trainer import TrainConfig, train

    folders = []
    for hook in hooks:
        name = hook.split(".")[1] + "-" + hook.split(".")[-1].removeprefix("hook_")
        loader = ActivationLoader(store, hook, batch_size=128, seed=0, epochs=20)
        cfg = make_config("topk", d_sae=d_sae, k=k, name=name)
        train(
            cfg, loader, TrainConfig(tokens=tokens, progress=False, hook=hook), out=Path(out) / name
        )
        folders.append(str(Path(out) / name))
    return folders


@pytest.fixture(scope="module")
def trained_folders(small_store, tmp_path_factory):
    return train_saes(small_store, tmp_path_factory.mktemp("circuit-saes"))
