"""`python benchmarks/X.py` puts benchmarks/ first on sys.path, so a script named like an
installed top-level package shadows it for every import in that process. A benchmark called
`kernels.py` once broke every model load (transformers imports Hugging Face's `kernels`)."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_no_benchmark_script_shadows_an_installed_package(tmp_path: Path) -> None:
    stems = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")
    assert "train" in stems and "decode_kernels" in stems  # the glob found the folder
    # A fresh interpreter in an empty folder: sys.path is the environment's, not the repo's.
    probe = (
        "import importlib.util, sys\n"
        "for name in sys.argv[1:]:\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    if spec is not None and spec.origin is not None:\n"
        "        print(name, spec.origin)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe, *stems],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    clashes = [line for line in found if line]
    assert not clashes, f"rename these benchmark scripts, they shadow installed packages: {clashes}"


def test_the_probe_sees_an_installed_package(tmp_path: Path) -> None:
    # The check above would pass vacuously if find_spec saw nothing: `kernels` (Hugging Face's,
    # a transformers dependency here) or at least `torch` must be found by the same probe.
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('torch').origin)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "torch" in out
