"""A non-editable install works: the wheel `pip install .` builds carries every package and the
prompt files, and the installed `saelab` runs (help, hooks, an explain run against a fake
endpoint) from a fresh virtual environment, away from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from saelab import resultstore as results
from saelab.autointerp.fake_endpoint import FakeEndpoint

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "saelab", "saelab.base", "saelab.activations", "saelab.kernels", "saelab.sae",
    "saelab.resultstore", "saelab.evaluation", "saelab.steering", "saelab.autointerp",
    "saelab.circuits", "saelab.app", "saelab.app.views",
]  # fmt: skip


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_in_a_fresh_venv_runs_help_hooks_imports_and_explain(interp_db, tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    junk = (".venv", ".git", "build", "runs", "*.egg-info", "__pycache__", "*.duckdb", "*.zarr")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*junk))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(wheels), str(source)], cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("saelab-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python, saelab = venv / "bin" / "python", venv / "bin" / "saelab"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
         cwd=tmp_path)  # fmt: skip
    # The third-party dependencies come from the test's environment through PYTHONPATH, which
    # (unlike a site directory) does not run the editable install's path hook: saelab's own
    # packages can only come from the wheel.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "elsewhere"
    work.mkdir()

    show = f"import importlib\nfor p in {PACKAGES!r}:\n print(importlib.import_module(p).__file__)"
    where = _run([str(python), "-c", show], work, env)
    site = str(venv.resolve())
    assert all(line.startswith(site) for line in where.split()), where
    prompts = _run([str(python), "-c", "import saelab.autointerp.prompts as p, pathlib; print(sorted("
                    "f.name for f in (pathlib.Path(p.__file__).parent / 'prompts').glob('*.txt')))"],
                   work, env)  # fmt: skip
    assert "detection.v1.txt" in prompts and "explain.v1.txt" in prompts

    assert "harvest" in _run([str(saelab), "--help"], work, env)
    assert "blocks.1.hook_resid_post" in _run([str(saelab), "hooks", "--layer", "1"], work, env)

    path, sae_id = interp_db
    db = tmp_path / "results.duckdb"
    shutil.copy(path, db)
    with FakeEndpoint() as fake:
        _run([str(saelab), "explain", "--db", str(db), "--sae", sae_id, "--features", "0:2",
              "--base-url", fake.base_url, "--explainers", "llm", "--scorers", "detection",
              "--no-progress"], work, env)  # fmt: skip
    scores = results.interp_scores(results.ResultsStore(db), sae_id)
    assert {(r["feature"], r["explainer"], r["scorer"]) for r in scores} == {
        (0, "llm", "detection"),
        (1, "llm", "detection"),
    }
    assert all(r["status"] != "failed" or r["n_failures"] for r in scores)
