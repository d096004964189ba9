"""User errors on the command line: one line, non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest


def saelab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saelab.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--hooks", "blocks.8.hook_resid_pst"], "did you mean blocks.8.hook_resid_post"),
        (["--hooks", "blocks.40.hook_resid_post"], "beyond the model"),
        (["--dataset", "/no/such/corpus"], "cannot load dataset"),
        (["--shard", "two"], "not of the form i/n"),
    ],
)
def test_harvest_bad_input(tmp_path, args, message):
    out = tmp_path / "acts.zarr"
    result = saelab("harvest", "--out", str(out), "--tokens", "256", "--no-progress", *args)
    assert result.returncode == 2
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("saelab harvest: error:")
    ]
    assert len(lines) == 1 and message in lines[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not (out / "zarr.json").exists()


def test_existing_store_needs_resume_or_overwrite(small_store):
    result = saelab("harvest", "--out", small_store, "--tokens", "256", "--no-progress")
    assert result.returncode == 2 and "pass --resume to continue it or --overwrite" in result.stderr


def test_help_lists_commands():
    result = saelab("--help")
    assert result.returncode == 0
    for command in ("harvest", "hooks", "demo"):
        assert command in result.stdout
