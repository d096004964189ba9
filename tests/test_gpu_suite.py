"""benchmarks/gpu_suite.sh: it parses, skips in one line where there is no CUDA device, and its
summary records every step's status (the GPU run itself happens on a lent machine)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["benchmarks/gpu_suite.sh", "benchmarks/gpu_suite_carry.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_skips_in_one_line_without_cuda(tmp_path):
    if shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA device")
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    env.pop("GPU_SUITE_SMOKE", None)
    out = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gpu_suite: skipped: no CUDA device")
    assert out.stdout.count("\n") == 1 and not out.stderr
    assert not (tmp_path / "out").exists()  # a skip writes nothing


def test_summary_lists_every_step(tmp_path):
    """A timed-out and a skipped step are recorded beside a finished one, with its headline."""
    (tmp_path / "parity.json").write_text(
        json.dumps({"passed": True, "counts": {"passed": 2}}) + "\n"
    )
    rows = [
        "setup\tok\t3.5\t\t",
        "parity\tok\t40.2\tparity.json\t",
        "kernels\ttimed_out\t200.0\t\tover its 200s limit",
        "harvest\tskipped\t1.0\t\tmissing Python packages: zarr",
    ]
    (tmp_path / "steps.tsv").write_text("\n".join(rows) + "\n")
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "summary", str(tmp_path)]
    out = subprocess.run(
        [*cmd, str(tmp_path / "steps.tsv"), "450", "gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("setup", "ok"),
        ("parity", "ok"),
        ("kernels", "timed_out"),
        ("harvest", "skipped"),
    ]
    assert summary["steps"][1]["headline"] == {"passed": True, "counts": {"passed": 2}}
    assert summary["steps"][2]["reason"] == "over its 200s limit"
    assert summary["all_ok"] is False and summary["budget_s"] == 450
    assert "torch" in summary["machine"]


def test_import_shim_maps_the_package_folders(tmp_path):
    """Where `pip install -e .` fails, setup's sitecustomize.py finds `saelab.base` in `base/`
    (checked in a process whose editable-install finder is removed, as on a bare machine)."""
    subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "shim", str(tmp_path)], cwd=ROOT, check=True
    )
    probe = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "sys.modules.pop('sitecustomize', None)\n"
        f"sys.path[:0] = [{str(tmp_path)!r}, {str(ROOT)!r}]\n"
        "import sitecustomize, saelab.base, saelab.base.errors\n"
        "print(saelab.base.errors.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ROOT / "base" / "errors.py")
