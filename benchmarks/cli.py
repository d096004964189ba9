"""Start-up time of the command line: `saelab --help` and each command's `--help`, the median of
several runs in fresh processes (the target: `saelab --help` under 1 s). `--vs SAELAB` also times
another installation's `saelab --help` (an older checkout's venv), alternating run by run.

    .venv/bin/python benchmarks/cli.py [--runs 5] [--vs /path/to/old/.venv/bin/saelab]

Writes benchmarks/results/cli-cpu.json (with the machine and versions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from saelab.cli import COMMANDS  # noqa: E402

SAELAB = [sys.executable, "-m", "saelab.cli"]


def seconds(args: list[str], runs: int, program: list[str] = SAELAB) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([*program, *args], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stderr[-500:]}")
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--vs", help="another installation's saelab executable, timed alongside")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/cli-cpu.json"))
    args = p.parse_args()
    result = {
        "benchmark": "cli",
        "runs": args.runs,
        "top_help_s": seconds(["--help"], args.runs),
        "command_help_s": {c: seconds([c, "--help"], args.runs) for c in COMMANDS},
        "target": "saelab --help < 1 s",
        "machine": machine_info(),
    }
    result["meets_target"] = result["top_help_s"] < 1.0
    if args.vs:
        ours, theirs = [], []
        for _ in range(args.runs):  # alternating, so a drifting machine affects both alike
            ours.append(seconds(["--help"], 1))
            theirs.append(seconds(["--help"], 1, [args.vs]))
        result["vs"] = {
            "program": args.vs,
            "top_help_s": statistics.median(theirs),
            "ours_top_help_s": statistics.median(ours),
            "ratio_ours_over_theirs": statistics.median(o / t for o, t in zip(ours, theirs)),
        }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
