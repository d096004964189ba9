"""Shared fixtures: the real embedded model (loaded once) and a small real activation store."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core (pytest-xdist): one thread each, and for the
    # processes the tests start, or the workers would fight over the same cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402

SMALL_HARVEST = dict(tokens=6 * 8 * 32, seq_len=32, batch_size=4, chunk_seqs=8, progress=False)
"""A few thousand real tokens in 6 chunks: big enough for resume and shuffling, fast on 2 cores."""


@pytest.fixture(scope="session")
def model():
    from saelab.activations.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def small_store(model, tmp_path_factory):
    """A complete store: two hooks, float16, 48 sequences of 32 tokens from the builtin corpus."""
    from saelab.activations.harvest import HarvestConfig, harvest

    out = str(tmp_path_factory.mktemp("stores") / "small.zarr")
    cfg = HarvestConfig(
        out=out, hooks=["blocks.2.hook_resid_post", "blocks.4.hook_mlp_out"], **SMALL_HARVEST
    )
    harvest(cfg, model=model)
    return out


@pytest.fixture(scope="session")
def local_generator():
    """The embedded model as the local endpoint's generator (loaded once, shared)."""
    from saelab.autointerp.server import Generator

    return Generator.load("smollm2-135m")
