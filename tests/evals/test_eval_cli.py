"""`saelab train` → `saelab eval` → `saelab compare` on a real store, and eval's bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from saelab import resultstore as results
from saelab.activations.store import ActivationStore
from saelab.evaluation.registry import describe
from saelab.sae.checkpoint import trained_model_sha256

HOOK = "blocks.2.hook_resid_post"


def saelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saelab.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def sweep(small_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    toml = folder / "sweep.toml"
    toml.write_text(
        '[train]\nhook = "blocks.2.hook_resid_post"\n\n'
        '[[sae]]\narchitecture = "topk"\nd_sae = 64\nk = 4\n\n'
        '[[sae]]\narchitecture = "relu"\nd_sae = 96\nl1_coefficient = 1.0\n'
    )
    out = folder / "run"
    result = saelab(
        "train",
        "--acts",
        small_store,
        "--sweep",
        str(toml),
        "--out",
        str(out),
        "--batch-size",
        "128",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_eval_and_compare_a_sweep(sweep, small_store, tmp_path):
    db = tmp_path / "results.duckdb"
    result = saelab(
        "eval",
        "--sae",
        str(sweep),
        "--acts",
        small_store,
        "--db",
        str(db),
        "--evals",
        "core",
        "loss",
        "features",
        "--loss-sequences",
        "4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    store = results.ResultsStore(db)
    saes = results.list_saes(store)
    assert len(saes) == 2 and {s.architecture for s in saes} == {"topk", "relu"}
    rows = {(r["name"], r["metric"]): r["value"] for r in results.metrics_long(store)}
    names = {s.name for s in saes}
    for name in names:
        assert 0 < rows[(name, "l0")] and -1 < rows[(name, "explained_variance")] <= 1
        assert (name, "ce_loss_score") in rows and (name, "features_dead_fraction") in rows
    for r in results.metrics_long(store):  # every stored metric has its one-line definition
        assert describe(r["eval"], r["metric"]), (r["eval"], r["metric"])
    topk = next(s for s in saes if s.architecture == "topk")
    assert rows[(topk.name, "l0")] == pytest.approx(4.0)  # TopK: exactly k active
    n_features = len(results.feature_stats(store, topk.sae_id))
    dash = results.feature_dashboard(store, topk.sae_id, 0)
    (vocab,) = store.query("SELECT count(*) AS n FROM vocab")
    assert n_features == 64 and vocab["n"] == 49152 and dash.histograms
    # one dead fraction everywhere: the share of never-fired latents over the most tokens counted
    # (the features eval's), named with that count; the core eval's own stays beside it
    (over,) = [r for r in results.sae_overview(store) if r["sae_id"] == topk.sae_id]
    dead = sum(1 for f in results.feature_stats(store, topk.sae_id).values() if f.dead)
    (features_run,) = [r for r in results.eval_runs(store, topk.sae_id) if r.eval == "features"]
    assert over["dead_fraction"] == pytest.approx(dead / 64)
    assert over["dead_fraction_tokens"] == features_run.n_tokens > 0
    assert over["core_dead_fraction"] == rows[(topk.name, "dead_fraction")]
    (loss_run,) = [r for r in results.eval_runs(store, topk.sae_id) if r.eval == "loss"]
    assert json.loads(loss_run.config_json)["sequences"] == 4  # --loss-sequences reached the eval
    # re-running one eval replaces its rows only
    again = saelab(
        "eval",
        "--sae",
        str(sweep / topk.name),
        "--acts",
        small_store,
        "--db",
        str(db),
        "--evals",
        "core",
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(results.metrics_long(store)) == sum(1 for _ in rows)
    html = tmp_path / "frontiers.html"
    shown = saelab("compare", "--db", str(db), "--html", str(html))
    assert shown.returncode == 0 and "topk" in shown.stdout and "relu" in shown.stdout
    assert html.stat().st_size > 10_000 and "plotly" in html.read_text()[:5000].lower()


def test_eval_refuses_mismatched_hook_and_width(sweep, small_store, tmp_path):
    folder = next(p for p in sweep.iterdir() if (p / "cfg.json").is_file())
    result = saelab(
        "eval",
        "--sae",
        str(folder),
        "--acts",
        small_store,
        "--db",
        str(tmp_path / "r.duckdb"),
        "--hook",
        "blocks.4.hook_mlp_out",
        "--evals",
        "core",
    )
    assert result.returncode == 2 and "was trained on blocks.2.hook_resid_post" in result.stderr
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["hook_name"] == HOOK
    missing = saelab(
        "eval", "--sae", str(tmp_path), "--acts", small_store, "--db", str(tmp_path / "r.duckdb")
    )
    assert missing.returncode == 2 and "neither an SAE folder nor a sweep folder" in missing.stderr


def test_eval_refuses_an_sae_trained_on_another_models_activations(sweep, small_store, tmp_path):
    source = next(p for p in sweep.iterdir() if (p / "cfg.json").is_file())
    cfg = json.loads((source / "cfg.json").read_text())
    # the check reads the hash where checkpoints keep it: the same as the store's here
    assert trained_model_sha256(cfg) == ActivationStore(small_store).attrs["model_sha256"]
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "sae_weights.safetensors").write_bytes(
        (source / "sae_weights.safetensors").read_bytes()
    )
    cfg["saelab"]["provenance"]["model_sha256"] = "0" * 64
    (other / "cfg.json").write_text(json.dumps(cfg))
    db = tmp_path / "r.duckdb"
    result = saelab("eval", "--sae", str(other), "--acts", small_store, "--db", str(db))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "trained on another model's activations" in lines[0]
    assert not db.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--evals", "core", "--max-tokens", "0"), "--max-tokens must be a positive"),
        (("--evals", "core", "--max-tokens", "-5"), "--max-tokens must be a positive"),
        (("--evals", "loss", "--loss-sequences", "0"), "--loss-sequences must be at least 1"),
        (("--evals", "loss", "--loss-sequences", "-1"), "--loss-sequences must be at least 1"),
    ],
)
def test_eval_rejects_non_positive_counts(sweep, small_store, tmp_path, flags, message):
    db = tmp_path / "r.duckdb"
    result = saelab("eval", "--sae", str(sweep), "--acts", small_store, "--db", str(db), *flags)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "give e.g." in lines[0]  # says what to pass instead
    assert not db.exists()
