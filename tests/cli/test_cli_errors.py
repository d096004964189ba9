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


def test_help_imports_no_torch_and_every_command_builds_its_flags():
    """`saelab --help` builds no command's parser and imports neither torch nor scipy (the time
    it takes is measured in benchmarks/cli.py); every command's own parser builds."""
    code = (
        "import sys, contextlib, io\n"
        "from saelab.cli import COMMANDS, build_parser, main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'scipy', 'transformers', 'duckdb') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "parser = build_parser()\n"
        "print(len(parser._actions))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_flag_error_is_one_line_naming_the_help():
    result = saelab("train", "--acts", "x", "--out", "y", "--d-sae", "1.5")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "'1.5' is not a whole number" in lines[0] and "saelab train --help" in lines[0]
