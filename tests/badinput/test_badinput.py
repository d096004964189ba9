"""Bad input on real files: each case asserts the one-line message, exit code 2 (CLI) or a
`UserError` (library), and that nothing on disk changed or was lost."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab import resultstore as results
from saelab.activations.harvest import HarvestConfig, harvest
from saelab.activations.store import ActivationStore
from saelab.base.errors import UserError
from saelab.cli import main
from saelab.sae.checkpoint import load_sae, save_sae
from saelab.sae.registry import build_sae, make_config

HOOK = "blocks.2.hook_resid_post"


def digest(path: Path) -> dict[str, str]:
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run_cli(args) -> int:
    return main([str(a) for a in args])


def cli(capsys, *args: str, match: str) -> None:
    """Run the CLI; expect exit 2 and one stderr line matching `match`."""
    capsys.readouterr()
    rc = run_cli(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and match in err[0], err


@pytest.fixture
def store_copy(small_store, tmp_path):
    out = tmp_path / "copy.zarr"
    shutil.copytree(small_store, out)
    return out


@pytest.fixture
def sae_dir(tmp_path):
    sae = build_sae(make_config("topk", d_sae=32, k=4, d_in=576))
    return save_sae(sae, tmp_path / "sae", meta={"hook_name": HOOK, "model_name": "smollm2-135m"})


@pytest.fixture(scope="module")
def run_dir(small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    args = ["train", "--acts", small_store, "--hook", HOOK, "--d-sae", "32", "--k", "4"]
    assert (
        run_cli(
            [*args, "--tokens", "256", "--batch-size", "128", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    return out, args


# -- 1. hooks of any shape --------------------------------------------------------------


def test_every_hook_kind_stored_as_the_model_computes_it(model, tmp_path):
    kinds = {}
    for name in model.hook_names:
        kind = name.replace("blocks.0.", "blocks.L.")
        if not name.startswith("blocks.") or name.startswith("blocks.0."):
            kinds.setdefault(kind, name)
    storable, refused = [], []
    for hook in kinds.values():
        try:
            model.hook_shapes([hook])
            storable.append(hook)
        except UserError as err:
            assert "\n" not in str(err) and hook in str(err)
            refused.append(hook)
    assert "blocks.0.attn.hook_z" in storable and "blocks.0.mlp.hook_post" in storable
    assert "blocks.0.attn.hook_pattern" in refused
    out = tmp_path / "all.zarr"
    with pytest.raises(UserError, match="not one vector per token"):
        harvest(
            HarvestConfig(
                out=str(out),
                hooks=["blocks.0.attn.hook_pattern"],
                tokens=64,
                seq_len=16,
                batch_size=2,
                chunk_seqs=2,
                progress=False,
            ),
            model=model,
        )
    assert not out.exists()
    harvest(
        HarvestConfig(
            out=str(out),
            hooks=storable,
            tokens=64,
            seq_len=16,
            batch_size=2,
            chunk_seqs=2,
            dtype="float32",
            progress=False,
        ),
        model=model,
    )
    store = ActivationStore(str(out))
    tokens = torch.from_numpy(store.group["tokens"][:]).long()
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(
            tokens, names_filter=storable, return_cache_object=False
        )
    for hook in storable:
        want = cache[hook].reshape(len(tokens), 16, -1).float()
        assert store.width(hook) == want.shape[-1]
        assert store.layout(hook) == list(cache[hook].shape[2:]), hook
        got = torch.from_numpy(store.group[f"hooks/{hook}"][:])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=hook)
    assert store.layout("blocks.0.attn.hook_z") == [9, 64]
    assert store.width("blocks.0.mlp.hook_post") == 1536
    # An SAE trains on the per-head store.
    rc = main(
        [
            "train",
            "--acts",
            str(out),
            "--hook",
            "blocks.0.attn.hook_z",
            "--d-sae",
            "16",
            "--k",
            "2",
            "--batch-size",
            "8",
            "--tokens",
            "16",
            "--out",
            str(tmp_path / "z"),
            "--no-progress",
        ]
    )
    assert rc == 0 and load_sae(tmp_path / "z").d_in == 576


# -- 2. missing / unreadable chunks, NaN metrics ------------------------------------------


@pytest.mark.parametrize("damage", ["delete-acts", "delete-tokens", "truncate-acts"])
def test_damaged_chunk_is_an_error_and_resume_repairs_it(
    model, small_store, store_copy, tmp_path, capsys, damage
):
    name = "tokens" if damage == "delete-tokens" else f"hooks/{HOOK}"
    chunk = store_copy / name / "c" / "1"
    chunk = next(p for p in chunk.rglob("*") if p.is_file()) if chunk.is_dir() else chunk
    if damage.startswith("delete"):
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:20])
    before = digest(store_copy)
    cli(
        capsys,
        "train",
        "--acts",
        store_copy,
        "--hook",
        HOOK,
        "--d-sae",
        "32",
        "--batch-size",
        "64",
        "--out",
        tmp_path / "o",
        match="chunk 1 of",
    )
    assert digest(store_copy) == before and not (tmp_path / "o").exists()
    harvest(
        HarvestConfig(
            out=str(store_copy),
            resume=True,
            hooks=["blocks.2.hook_resid_post", "blocks.4.hook_mlp_out"],
            tokens=6 * 8 * 32,
            seq_len=32,
            batch_size=4,
            chunk_seqs=8,
            progress=False,
        ),
        model=model,
    )
    a, b = ActivationStore(str(store_copy)), ActivationStore(small_store)
    for c in range(6):
        np.testing.assert_array_equal(a.read_acts(HOOK, c).numpy(), b.read_acts(HOOK, c).numpy())


def test_nan_metrics_never_overwrite_stored_ones(small_store, sae_dir, tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    assert (
        run_cli(["eval", "--sae", sae_dir, "--acts", small_store, "--db", db, "--evals", "core"])
        == 0
    )
    before = results.metrics_long(results.ResultsStore(db))
    sae = load_sae(sae_dir)
    with torch.no_grad():
        sae.W_dec.fill_(float("nan"))
    save_sae(sae, sae_dir, meta={"hook_name": HOOK})
    cli(
        capsys,
        "eval",
        "--sae",
        sae_dir,
        "--acts",
        small_store,
        "--db",
        db,
        "--evals",
        "core",
        match="nothing was written",
    )
    assert results.metrics_long(results.ResultsStore(db)) == before


# -- 3. resume must not change what the run trains on ------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        (["--hook", "blocks.4.hook_mlp_out"], "hook differs"),
        (["--tokens", "512"], "train.tokens differs"),
        (["--batch-size", "64"], "batch_size differs"),
        (["--k", "8"], "resume with the same sweep"),
        (["--d-sae", "64"], "resume with the same sweep"),
        (["--arch", "relu"], "resume with the same sweep"),
    ],
)
def test_resume_refuses_a_change(run_dir, capsys, change, match):
    out, base = run_dir
    before = digest(out)
    args = dict(zip(base[1::2], base[2::2], strict=False))
    args.update({"--tokens": "256", "--batch-size": "128"})
    args.update(dict(zip(change[::2], change[1::2], strict=True)))
    if "--arch" in args:
        args.pop("--k")
    flat = [x for kv in args.items() for x in kv]
    cli(capsys, "train", *flat, "--out", out, "--resume", "--no-progress", match=match)
    assert digest(out) == before


# -- 4. outputs inside a store, foreign folders, overwrite ------------------------------


def test_outputs_inside_a_store_are_refused(store_copy, sae_dir, capsys):
    before = digest(store_copy)
    cli(
        capsys,
        "train",
        "--acts",
        store_copy,
        "--hook",
        HOOK,
        "--out",
        store_copy / "sae",
        match="inside the activation store",
    )
    cli(
        capsys,
        "eval",
        "--sae",
        sae_dir,
        "--acts",
        store_copy,
        "--db",
        store_copy / "r.duckdb",
        match="inside the activation store",
    )
    cli(
        capsys,
        "harvest",
        "--out",
        store_copy / "inner.zarr",
        "--tokens",
        "64",
        match="inside the activation store",
    )
    cli(
        capsys,
        "compare",
        "--db",
        "x.duckdb",
        "--html",
        store_copy / "c.html",
        match="inside the activation store",
    )
    assert digest(store_copy) == before


def test_train_into_a_foreign_folder_is_refused(small_store, tmp_path, capsys):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    before = digest(foreign)
    cli(
        capsys,
        "train",
        "--acts",
        small_store,
        "--hook",
        HOOK,
        "--out",
        foreign,
        match="not empty and holds no saelab training run",
    )
    assert digest(foreign) == before


def test_overwrite_removes_only_the_stores_own_files(model, tmp_path):
    out = tmp_path / "s.zarr"
    cfg = dict(
        hooks=[HOOK], tokens=2 * 4 * 16, seq_len=16, batch_size=4, chunk_seqs=4, progress=False
    )
    harvest(HarvestConfig(out=str(out), **cfg), model=model)
    (out / "notes").mkdir()
    (out / "notes" / "keep.txt").write_text("mine")
    harvest(HarvestConfig(out=str(out), overwrite=True, **cfg), model=model)
    assert (out / "notes" / "keep.txt").read_text() == "mine"
    assert ActivationStore(str(out)).committed_sequences() == 8


# -- 5/9. hooks --layer, compare --html, llm-serve port, store smaller than a batch ------


@pytest.fixture
def cached_model(model, monkeypatch):
    import saelab.activations.harvest
    import saelab.activations.models

    monkeypatch.setattr(saelab.activations.models, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(saelab.activations.harvest, "load_model", lambda *a, **k: model)
    return model


@pytest.mark.parametrize("layer", ["99", "30", "-1"])
def test_hooks_layer_out_of_range(cached_model, capsys, layer):
    cli(capsys, "hooks", "--layer", layer, match="outside")


def test_compare_html_is_a_folder(small_store, sae_dir, tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    assert (
        run_cli(["eval", "--sae", sae_dir, "--acts", small_store, "--db", db, "--evals", "core"])
        == 0
    )
    cli(capsys, "compare", "--db", db, "--html", tmp_path, match="is a folder")


def test_llm_serve_busy_port(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cli(capsys, "llm-serve", "--port", port, match="already in use")


def test_store_smaller_than_one_batch(small_store, tmp_path, capsys):
    cli(
        capsys,
        "train",
        "--acts",
        small_store,
        "--hook",
        HOOK,
        "--batch-size",
        "100000",
        "--out",
        tmp_path / "o",
        "--no-progress",
        match="fewer than one batch",
    )
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# -- 6. damaged checkpoints, sweep folders ---------------------------------------------


def _drop_d_sae(folder: Path) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["saelab"]["config"]["d_sae"]
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _edit_d_in(folder: Path) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = 500
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _truncate(folder: Path) -> None:
    w = folder / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:1000])


def _other_weights(folder: Path) -> None:
    other = build_sae(make_config("topk", d_sae=48, k=4, d_in=576))
    save_sae(other, folder / "x")
    shutil.move(folder / "x" / "sae_weights.safetensors", folder / "sae_weights.safetensors")
    shutil.rmtree(folder / "x")


DAMAGE = {
    "cfg lacks d_sae": (_drop_d_sae, "lacks a valid d_sae"),
    "d_in edited": (_edit_d_in, "says d_in=500"),
    "weights truncated": (_truncate, "is damaged"),
    "weights missing": (lambda f: (f / "sae_weights.safetensors").unlink(), "is missing"),
    "cfg not JSON": (lambda f: (f / "cfg.json").write_text("{"), "not valid JSON"),
    "weights of another SAE": (_other_weights, "has shape"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoint(sae_dir, kind):
    damage, match = DAMAGE[kind]
    damage(sae_dir)
    with pytest.raises(UserError, match=match) as err:
        load_sae(sae_dir)
    assert "\n" not in str(err.value) and str(sae_dir) in str(err.value)


def test_sweep_with_one_damaged_sae_evaluates_the_others(small_store, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for name in ("a", "b", "c"):
        sae = build_sae(make_config("topk", d_sae=32, k=4, d_in=576, seed=ord(name)))
        save_sae(sae, sweep / name, meta={"hook_name": HOOK})
    _truncate(sweep / "b")
    db = tmp_path / "r.duckdb"
    cli(
        capsys,
        "eval",
        "--sae",
        sweep,
        "--acts",
        small_store,
        "--db",
        db,
        "--evals",
        "core",
        match="1 of 3 SAEs could not be evaluated (b:",
    )
    assert {r["name"] for r in results.metrics_long(results.ResultsStore(db))} == {"a", "c"}


# -- 7. numbers checked before any work -------------------------------------------------


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--lr", "nan"], "finite"),
        (["--lr=-1e-3"], "learning rate must be positive"),
        (["--k", "inf"], "--k must be a whole number, got inf (TopKConfig)"),
        (["--k", "16.5"], "--k must be a whole number, got 16.5 (TopKConfig)"),
        (["--d-sae", "1e12"], "memory"),
    ],
)
def test_training_numbers(small_store, tmp_path, capsys, flags, match):
    cli(
        capsys,
        "train",
        "--acts",
        small_store,
        "--hook",
        HOOK,
        "--batch-size",
        "128",
        *flags,
        "--out",
        tmp_path / "o",
        "--no-progress",
        match=match,
    )
    assert not (tmp_path / "o").exists()


def test_harvest_size_checked_against_corpus_and_disk(cached_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "big.zarr"
    cli(
        capsys,
        "harvest",
        "--out",
        out,
        "--tokens",
        "1e15",
        "--no-progress",
        match="corpus 'builtin' holds at most",
    )
    import saelab.activations.store

    monkeypatch.setattr(saelab.activations.store, "free_bytes", lambda url: 1000)
    cli(
        capsys,
        "harvest",
        "--out",
        out,
        "--tokens",
        "1e4",
        "--no-progress",
        match="only 0.000954 MiB is free",
    )
    assert not out.exists()


# -- 8. a full disk ---------------------------------------------------------------------


def test_disk_full_during_harvest_keeps_committed_chunks(model, small_store, tmp_path, monkeypatch):
    from saelab.activations import store as store_mod

    calls = {"n": 0}
    real = store_mod.writable

    def full_after_first_chunk(group, name):
        calls["n"] += 1
        if calls["n"] > 5:  # chunk 0's four data arrays and its activations land
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(group, name)

    monkeypatch.setattr(store_mod, "writable", full_after_first_chunk)
    out = tmp_path / "full.zarr"
    cfg = dict(
        hooks=[HOOK], tokens=6 * 8 * 32, seq_len=32, batch_size=4, chunk_seqs=8, progress=False
    )
    with pytest.raises(UserError, match="the disk is full") as err:
        harvest(HarvestConfig(out=str(out), **cfg), model=model)
    assert "\n" not in str(err.value) and "full.zarr" in str(err.value)
    assert ActivationStore(str(out)).committed_chunks() == [0]
    monkeypatch.setattr(store_mod, "writable", real)
    harvest(HarvestConfig(out=str(out), resume=True, **cfg), model=model)
    a, b = ActivationStore(str(out)), ActivationStore(small_store)
    np.testing.assert_array_equal(a.read_acts(HOOK, 5).numpy(), b.read_acts(HOOK, 5).numpy())


def test_disk_full_during_training_keeps_the_last_checkpoint(
    run_dir, tmp_path, capsys, monkeypatch
):
    import saelab.sae.checkpoint

    out, base = run_dir
    copy = tmp_path / "r"
    shutil.copytree(out, copy)
    before = digest(copy)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saelab.sae.checkpoint, "save_file", full)
    cli(
        capsys,
        *base,
        "--tokens",
        "512",
        "--batch-size",
        "128",
        "--out",
        tmp_path / "new",
        "--no-progress",
        match="the disk is full",
    )
    new = tmp_path / "new"
    assert not [p for p in new.rglob(".*") if p.is_file()]  # no temporary files left behind
    assert digest(copy) == before


def test_results_store_refuses_non_finite_metrics(tmp_path):
    """The writer itself (not only the eval runner) keeps good rows from NaN runs."""
    db = tmp_path / "r.duckdb"
    store = results.ResultsStore(db, "write")
    record = results.SAERow(
        sae_id="s1", name="s", path="/x", architecture="topk", d_in=4, d_sae=8, hook=HOOK,
        model="m", model_sha256="h", cfg_json="{}", cfg_hash="h", weights_sha256="w",
    )  # fmt: skip

    def run(value):
        return results.EvalRun(
            sae_id="s1",
            eval="core",
            config={},
            acts_url="a",
            n_tokens=1,
            seconds=0.0,
            metrics={"fvu": value, "l0": 3.0},
        )

    results.write_eval_run(store, record, run(0.25))
    before = digest(db)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="non-finite metrics") as err:
            results.write_eval_run(store, record, run(bad))
        assert "\n" not in str(err.value)
    assert digest(db) == before
    assert {r["metric"]: r["value"] for r in results.metrics_long(results.ResultsStore(db))}[
        "fvu"
    ] == 0.25
