"""The harvester and the store contract: content, resume after SIGKILL, shards, bad input."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from saelab.activations.harvest import FINGERPRINT, HarvestConfig, harvest
from saelab.activations.store import ActivationStore
from saelab.base.errors import UserError
from tests.conftest import SMALL_HARVEST

HOOKS = ["blocks.2.hook_resid_post", "blocks.4.hook_mlp_out"]
ARRAYS = ["tokens", "doc", "offset", "valid", "progress", *(f"hooks/{h}" for h in HOOKS)]


def assert_same_store(a: str, b: str) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    for key in (*FINGERPRINT, "committed_sequences", "complete", "n_seq"):
        assert ga.attrs[key] == gb.attrs[key], key


def test_store_contract(small_store, model):
    g = zarr.open_group(small_store, mode="r")
    a = dict(g.attrs)
    assert a["format_version"] == 1 and a["complete"] is True
    assert a["committed_sequences"] == 48 and a["seq_len"] == 32
    assert a["hooks"] == {h: 576 for h in HOOKS}
    assert a["model_sha256"] == model.weights_sha256 and a["dataset"] == "builtin"
    assert g["tokens"].dtype == np.int32 and g["tokens"].shape == (48, 32)
    assert g["tokens"].chunks == (8, 32)
    acts = g[f"hooks/{HOOKS[0]}"]
    assert acts.dtype == np.float16 and acts.shape == (48, 32, 576) and acts.chunks == (8, 32, 576)
    assert (g["tokens"][:, 0] == a["bos_token_id"]).all() and g["valid"][:].all()
    assert not np.isnan(acts[:].astype(np.float32)).any() and acts[:].astype(np.float32).std() > 0


def test_stored_activations_are_the_models(small_store, model):
    """Stored values equal a direct forward on the stored tokens (up to the float16 cast)."""
    g = zarr.open_group(small_store, mode="r")
    rows = [3, 17, 40]
    tokens = torch.from_numpy(g["tokens"][rows]).long()
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=HOOKS)
    for hook in HOOKS:
        stored = torch.from_numpy(g[f"hooks/{hook}"][rows].astype(np.float32))
        torch.testing.assert_close(stored, cache[hook].half().float(), atol=2e-2, rtol=2e-3)


def test_float32_and_bfloat16_storage(model, tmp_path):
    small = dict(SMALL_HARVEST, tokens=8 * 32)
    for dtype in ("float32", "bfloat16"):
        out = str(tmp_path / f"{dtype}.zarr")
        harvest(HarvestConfig(out=out, hooks=[HOOKS[0]], dtype=dtype, **small), model=model)
        store = ActivationStore(out)
        acts = store.read_acts(HOOKS[0], 0)
        assert acts.dtype == getattr(torch, dtype)
        tokens = torch.from_numpy(store.read_tokens(0)).long()
        with torch.no_grad():
            _, cache = model.bridge.run_with_cache(tokens, names_filter=[HOOKS[0]])
        ref = cache[HOOKS[0]].to(getattr(torch, dtype))
        torch.testing.assert_close(
            acts.float(), ref.float(), atol=1e-3 if dtype == "float32" else 0.1, rtol=1e-2
        )


def _harvest_cli(out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "saelab.cli",
        "harvest",
        "--out",
        out,
        "--hooks",
        *HOOKS,
        "--tokens",
        str(SMALL_HARVEST["tokens"]),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--chunk-seqs",
        "8",
        "--no-progress",
    ]


def _progress(out: str) -> int:
    try:
        return int(zarr.open_group(out, mode="r")["progress"][0])
    except Exception:
        return -1  # not created yet


@pytest.mark.parametrize("kill_after_chunks", [0, None])
def test_sigkill_then_resume_is_identical(small_store, model, tmp_path, kill_after_chunks):
    """SIGKILL a harvest (before any commit, or after a random number of chunks), resume it,
    and get exactly the store an uninterrupted run wrote."""
    out = str(tmp_path / "killed.zarr")
    target = kill_after_chunks if kill_after_chunks is not None else random.Random().randint(1, 4)
    proc = subprocess.Popen(_harvest_cli(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _progress(out) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    if target == 0:  # store created, maybe mid-chunk: kill at a random moment within ~0.3 s
        time.sleep(random.Random().uniform(0, 0.3))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = _progress(out)
    assert committed < 6, "the harvest finished before it could be killed; make it bigger"
    if committed >= 0:
        assert zarr.open_group(out, mode="r").attrs["complete"] is False
        with pytest.raises(UserError, match="already exists"):
            harvest(HarvestConfig(out=out, hooks=HOOKS, **SMALL_HARVEST), model=model)
    result = harvest(HarvestConfig(out=out, hooks=HOOKS, resume=True, **SMALL_HARVEST), model=model)
    assert result.complete and result.sequences == 48 - max(committed, 0) * 8
    assert_same_store(out, small_store)


def test_a_store_killed_while_being_created_is_recreated_by_resume(small_store, model, tmp_path):
    """Killed between writing the attributes and creating the last array: the store is still
    recognised (not "foreign"), and --resume recreates it, identical to an uninterrupted run."""
    out = str(tmp_path / "unfinished.zarr")
    calls = {"n": 0}
    original = zarr.Group.create_array

    def dies_on_the_third_array(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process stops here, mid-creation
        return original(self, *args, **kwargs)

    zarr.Group.create_array = dies_on_the_third_array
    try:
        with pytest.raises(KeyboardInterrupt):
            harvest(HarvestConfig(out=out, hooks=HOOKS, **SMALL_HARVEST), model=model)
    finally:
        zarr.Group.create_array = original
    attrs = dict(zarr.open_group(out, mode="r").attrs)
    assert attrs["creating"] is True and attrs["complete"] is False
    with pytest.raises(UserError, match="already exists"):
        harvest(HarvestConfig(out=out, hooks=HOOKS, **SMALL_HARVEST), model=model)
    harvest(HarvestConfig(out=out, hooks=HOOKS, resume=True, **SMALL_HARVEST), model=model)
    assert_same_store(out, small_store)
    assert zarr.open_group(out, mode="r").attrs["creating"] is False


def test_shards_fill_one_store(small_store, model, tmp_path):
    out = f"file://{tmp_path}/sharded.zarr"  # also exercises an fsspec URL
    for i in (2, 0, 1):
        cfg = HarvestConfig(out=out, hooks=HOOKS, shard=(i, 3), resume=True, **SMALL_HARVEST)
        result = harvest(cfg, model=model)
        assert result.complete == (i == 1)
    store = ActivationStore(out)
    assert store.committed_chunks() == list(range(6))
    for name in ("tokens", "doc", "offset", *(f"hooks/{h}" for h in HOOKS)):
        np.testing.assert_array_equal(
            store.group[name][:], zarr.open_group(small_store, mode="r")[name][:]
        )


def test_memory_url(model):
    out = "memory://saelab-test/acts.zarr"
    harvest(
        HarvestConfig(out=out, hooks=[HOOKS[0]], **dict(SMALL_HARVEST, tokens=8 * 32)), model=model
    )
    assert ActivationStore(out).committed_sequences() == 8


def test_resume_with_other_config_is_refused(small_store, model):
    with pytest.raises(UserError, match=r"config differs \(seq_len"):
        harvest(
            HarvestConfig(
                out=small_store, hooks=HOOKS, resume=True, **dict(SMALL_HARVEST, seq_len=16)
            ),
            model=model,
        )


def test_overwrite_replaces(model, tmp_path):
    out = str(tmp_path / "o.zarr")
    small = dict(SMALL_HARVEST, tokens=8 * 32)
    harvest(HarvestConfig(out=out, hooks=[HOOKS[0]], **small), model=model)
    harvest(HarvestConfig(out=out, hooks=[HOOKS[1]], overwrite=True, **small), model=model)
    assert list(ActivationStore(out).hooks) == [HOOKS[1]]


def test_corpus_exhaustion_shrinks_the_store(model, tmp_path):
    doc = tmp_path / "tiny.txt"
    doc.write_text("A short text about the weather in Paris and the rivers of France. " * 12)
    out = str(tmp_path / "tiny.zarr")
    result = harvest(
        HarvestConfig(
            out=out, dataset=str(doc), hooks=[HOOKS[0]], **dict(SMALL_HARVEST, tokens=24 * 32)
        ),
        model=model,
    )
    store = ActivationStore(out)
    assert 0 < result.sequences < 48
    assert store.committed_sequences() == result.sequences == store.group["tokens"].shape[0]
    assert store.attrs["complete"] is True and store.attrs["exhausted"] is True


def test_unwritable_location(model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root ignores file modes; sysfs refuses new files even to root
    target = locked / "a.zarr" if not os.access(locked, os.W_OK) else "/sys/saelab-test.zarr"
    with pytest.raises(UserError, match="cannot write"):
        harvest(HarvestConfig(out=str(target), hooks=[HOOKS[0]], **SMALL_HARVEST), model=model)


def test_file_in_the_way(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError):
        harvest(
            HarvestConfig(out=str(blocker / "a.zarr"), hooks=[HOOKS[0]], **SMALL_HARVEST),
            model=model,
        )


@pytest.mark.parametrize("policy", ["drop", "keep", "error"])
def test_nonfinite_activations(model, tmp_path, policy):
    """Poison one sequence's activations with NaN through a hook and check each policy."""

    def poison(act, hook):
        act[1, 3] = float("nan")
        return act

    out = str(tmp_path / f"nan-{policy}.zarr")
    cfg = HarvestConfig(
        out=out, hooks=[HOOKS[0]], nonfinite=policy, **dict(SMALL_HARVEST, tokens=16 * 32)
    )
    model.bridge.add_hook("blocks.1.hook_resid_post", poison)
    try:
        if policy == "error":
            with pytest.raises(UserError, match="NaN/inf"):
                harvest(cfg, model=model)
            return
        result = harvest(cfg, model=model)
    finally:
        model.bridge.reset_hooks()
    store = ActivationStore(out)
    valid = store.group["valid"][:]
    assert result.nonfinite_sequences == 4  # row 1 of each batch of 4
    assert store.attrs["nonfinite_sequences"] == 4
    if policy == "drop":
        assert (~valid).sum() == 4 and not valid[1] and valid[0]
        assert np.isfinite(store.group[f"hooks/{HOOKS[0]}"][:]).all()
    else:
        assert valid.all()


def test_bad_config_values(model, tmp_path):
    base = dict(out=str(tmp_path / "x.zarr"), hooks=[HOOKS[0]])
    for kwargs, pattern in [
        (dict(dtype="int8"), "unknown --dtype"),
        (dict(chunk_seqs=10, batch_size=4), "multiple of --batch-size"),
        (dict(shard=(3, 2)), "--shard 3/2"),
        (dict(tokens=0), "--tokens must be positive"),
        (dict(hooks=[]), "no hooks"),
    ]:
        with pytest.raises(UserError, match=pattern):
            harvest(HarvestConfig(**{**base, **kwargs}), model=model)
    assert not (tmp_path / "x.zarr").exists()
