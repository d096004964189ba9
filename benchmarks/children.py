"""What the benchmarks that train in subprocesses share: launching a child (saelab's python or a
peer's scratch venv), the sys.path hygiene a peer child needs, and the FVU they all report.

Imports only the standard library at module level, so a peer's python can import it too.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained, in float64: Σ‖x − x̂‖² / Σ‖x − mean(x)‖²."""
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def peer_sys_path() -> None:
    """Keep this repository off sys.path in a peer child: the peers must not see saelab's
    packages (its `kernels` folder would also shadow Hugging Face's `kernels`, which
    transformers imports)."""
    drop = {str(ROOT), str(ROOT / "benchmarks")}
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) not in drop]


def ensure_kernels() -> str:
    """Which sparse kernels saelab's child uses."""
    from saelab import kernels

    assert all(hasattr(kernels, n) for n in ("sparse_decode", "gather_preacts", "topk_select"))
    return "saelab.kernels"


def run_child(
    script: str | Path, python: str, kind: str, spec: dict, timeout: float = 3600
) -> dict:
    """Run `python script --child KIND SPEC` and parse the JSON of its last stdout line;
    a failure comes back as `{"error": <last stderr line>}`."""
    cmd = [python, str(Path(script).resolve()), "--child", kind, json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if python == sys.executable else dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])
