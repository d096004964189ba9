"""`saelab harvest --out` never deletes what is there unless it is a saelab store."""

from __future__ import annotations

import subprocess
import sys

import pytest
import zarr

from saelab.activations.harvest import HarvestConfig, harvest
from saelab.activations.store import ActivationStore
from tests.conftest import SMALL_HARVEST

HOOK = "blocks.2.hook_resid_post"


def harvest_cli(out, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "saelab.cli",
            "harvest",
            "--out",
            str(out),
            "--hooks",
            HOOK,
            "--tokens",
            str(8 * 32),
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--chunk-seqs",
            "8",
            "--no-progress",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_refused(result: subprocess.CompletedProcess, out) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "exists and is not a saelab activation store" in lines[0]
    assert "choose another --out" in lines[0] and str(out) in lines[0]


@pytest.mark.parametrize("flags", [(), ("--overwrite",), ("--resume",)])
def test_folder_with_files_is_refused_and_kept(tmp_path, flags):
    out = tmp_path / "my-project"
    (out / "src").mkdir(parents=True)
    (out / "notes.txt").write_text("do not delete me")
    (out / "src" / "main.py").write_text("print('hi')\n")
    (out / ".hidden").write_text("secret")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert_refused(harvest_cli(out, *flags), out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "notes.txt").read_text() == "do not delete me"
    assert (out / "src" / "main.py").read_text() == "print('hi')\n"


@pytest.mark.parametrize("flags", [(), ("--overwrite",)])
def test_file_is_refused_and_kept(tmp_path, flags):
    out = tmp_path / "acts.zarr"
    out.write_text("not a store")
    assert_refused(harvest_cli(out, *flags), out)
    assert out.read_text() == "not a store"


def test_foreign_zarr_group_is_refused_and_kept(tmp_path):
    out = tmp_path / "other.zarr"
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    group.create_array("data", shape=(4,), dtype="int32")
    group.attrs["owner"] = "someone else"
    assert_refused(harvest_cli(out, "--overwrite"), out)
    kept = zarr.open_group(str(out), mode="r")
    assert kept.attrs["owner"] == "someone else" and kept["data"].shape == (4,)


def test_empty_folder_may_be_used(model, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    small = dict(SMALL_HARVEST, tokens=8 * 32)
    result = harvest(HarvestConfig(out=str(out), hooks=[HOOK], **small), model=model)
    assert result.complete and ActivationStore(str(out)).committed_sequences() == 8
