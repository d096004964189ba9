"""An eval, a scorer and an explainer from outside saelab: one file each registers through the
entry points (`saelab.evals`, `saelab.scorers`, `saelab.explainers`), its settings become flags
of `saelab eval`, and its per-latent values land in the results store beside its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from saelab import resultstore as results
from saelab.base.errors import UserError
from saelab.sae.checkpoint import save_sae
from saelab.sae.registry import build_sae, make_config

HOOK = "blocks.2.hook_resid_post"

PLUGIN = '''
"""A toy eval: the norm of each latent's decoder row, times a setting."""
from dataclasses import dataclass

from saelab.evaluation.spec import EvalResult, EvalSpec, Metric


@dataclass
class ToySettings:
    scale: float = 1.0
    """Multiplies every norm."""


def run(ctx):
    norms = ctx.sae.W_dec.detach().norm(dim=1) * ctx.settings.scale
    return EvalResult(
        {"toy_mean_norm": float(norms.mean())}, 0, {"scale": ctx.settings.scale},
        latent_metrics={"toy_norm": norms.tolist()},
        intervals={"toy_mean_norm": (float(norms.min()), float(norms.max()))},
    )


SPEC = EvalSpec(
    "toy", "decoder norms, scaled", run,
    (Metric("toy_mean_norm", "mean decoder-row norm x scale", None),
     Metric("toy_norm", "decoder-row norm x scale", "higher", per_latent=True)),
    ToySettings,
)


async def constant(ctx, explanation):
    from saelab.autointerp.scorers import finish

    return finish("constant", 0.5, (0.5, 0.5), {}, n_windows=1, n_valid=1)
'''


@pytest.fixture
def plugin_path(tmp_path):
    """A folder holding an installed-looking distribution with the three entry points."""
    site = tmp_path / "site"
    (site / "toyplugin-0.1.dist-info").mkdir(parents=True)
    (site / "toyplugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "toyplugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toyplugin\nVersion: 0.1\n"
    )
    (site / "toyplugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[saelab.evals]\ntoy = toyplugin:SPEC\nbroken = toyplugin:NOT_THERE\n\n"
        "[saelab.scorers]\nconstant = toyplugin:constant\n"
    )
    return site


@pytest.fixture
def sae_folder(tmp_path):
    sae = build_sae(make_config("topk", d_sae=16, k=2, d_in=576, seed=3))
    save_sae(sae, tmp_path / "sae", meta={"hook_name": HOOK})
    return tmp_path / "sae", sae


def run_cli(args, plugin_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    return subprocess.run(
        [sys.executable, "-m", "saelab.cli", *args], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip


def test_a_plugin_eval_gets_flags_runs_and_stores_its_per_latent_values(
    plugin_path, sae_folder, small_store, tmp_path
):
    folder, sae = sae_folder
    shown = run_cli(["eval", "--help"], plugin_path)
    assert shown.returncode == 0 and "--toy-scale" in shown.stdout and "toy" in shown.stdout
    assert "Multiplies every norm" in shown.stdout  # the field's docstring is its help
    assert "plugin 'broken'" in shown.stderr and "skipped" in shown.stderr  # never fatal
    db = tmp_path / "r.duckdb"
    args = ["eval", "--sae", str(folder), "--acts", small_store, "--db", str(db)]
    done = run_cli([*args, "--evals", "toy", "core", "--toy-scale", "2"], plugin_path)
    assert done.returncode == 0, done.stderr[-2000:]
    store = results.ResultsStore(db)
    (row,) = results.list_saes(store)
    expected = (sae.W_dec.detach().double().norm(dim=1) * 2).tolist()
    stored = store.select(
        results.LatentMetricRow, "sae_id = ? AND eval = 'toy'", [row.sae_id], order="feature"
    )
    assert [r.feature for r in stored] == list(range(16))
    assert [r.value for r in stored] == pytest.approx(expected, rel=1e-6)
    metrics = {(m["eval"], m["metric"]): m["value"] for m in results.metrics_long(store)}
    assert metrics[("toy", "toy_mean_norm")] == pytest.approx(sum(expected) / 16, rel=1e-6)
    assert ("core", "fvu") in metrics  # the built-in evals run beside it
    spread = {m["metric"]: (m["ci_low"], m["ci_high"]) for m in results.metrics_long(store)}
    assert spread["toy_mean_norm"] == pytest.approx((min(expected), max(expected)), rel=1e-6)
    assert spread["fvu"] == (None, None)  # an eval that measures no interval stores none
    (toy_run,) = [r for r in results.eval_runs(store) if r.eval == "toy"]
    assert json.loads(toy_run.config_json) == {"scale": 2.0}
    (one,) = results.latent_metrics(store, row.sae_id, 3)  # what the feature page shows
    assert (one.eval, one.metric, one.value) == ("toy", "toy_norm", pytest.approx(expected[3]))
    unknown = run_cli([*args, "--evals", "nope"], plugin_path)
    assert unknown.returncode == 2 and "invalid choice: 'nope'" in unknown.stderr


def test_a_plugin_scorer_is_offered_by_explain(plugin_path):
    shown = run_cli(["explain", "--help"], plugin_path)
    assert shown.returncode == 0 and "constant" in shown.stdout


def test_registering_an_eval_in_process_reaches_evaluate(sae_folder, small_store, tmp_path):
    """The notebook way: register_eval, then EvalConfig names it with typed settings."""
    import importlib.util

    from saelab.evaluation.registry import EVALS, register_eval
    from saelab.evaluation.runner import EvalConfig, evaluate

    path = tmp_path / "toy_in_process.py"
    path.write_text(textwrap.dedent(PLUGIN))
    spec = importlib.util.spec_from_file_location("toy_in_process", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register_eval(module.SPEC, replace=True)
    try:
        folder, sae = sae_folder
        db = tmp_path / "r.duckdb"
        cfg = EvalConfig(
            str(folder), small_store, str(db), evals=["toy"],
            settings={"toy": module.ToySettings(scale=3.0)},
        )  # fmt: skip
        out = evaluate(cfg, log=lambda *_: None)
        expected = float(sae.W_dec.detach().norm(dim=1).mean()) * 3
        assert out["sae"]["toy"]["toy_mean_norm"] == pytest.approx(expected, rel=1e-6)
        with pytest.raises(UserError, match="the toy eval has no setting 'x'"):
            EvalConfig(
                str(folder), small_store, str(db), evals=["toy"], settings={"toy": {"x": 1}}
            ).validate()
    finally:
        EVALS.pop("toy", None)
