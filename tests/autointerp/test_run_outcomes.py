"""Every way out of `saelab explain` leaves a truthful `autointerp_runs` row and one line of
error: the endpoint down before any latent finishes, every request timing out, Ctrl-C during
the first request, SIGTERM through the local server; a rerun then continues. And an older
results file (schema 2) gains the run's message column in place."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from saelab import resultstore as results
from saelab.autointerp.fake_endpoint import FakeEndpoint
from saelab.cli import main
from saelab.resultstore.schema import MIGRATIONS


@pytest.fixture
def db(interp_db, tmp_path):
    path, sae_id = interp_db
    copy = tmp_path / "results.duckdb"
    shutil.copy(path, copy)
    return str(copy), sae_id


@pytest.fixture(scope="module")
def ready(interp_db, tmp_path_factory) -> str:
    """Four latents with enough windows to be explained (each needs requests): found by a
    run against the fake endpoint on a copy."""
    path, sae_id = interp_db
    copy = str(tmp_path_factory.mktemp("ready") / "results.duckdb")
    shutil.copy(path, copy)
    with FakeEndpoint() as fake:
        assert main(argv(copy, sae_id, fake.base_url, "0:128")) == 0
    with results.ResultsStore(copy).reading() as con:
        rows = con.execute(
            "SELECT DISTINCT feature FROM explanations WHERE status = 'ok' ORDER BY feature LIMIT 4"
        ).fetchall()
    assert len(rows) == 4
    return ",".join(str(f) for (f,) in rows)


def runs(db: str) -> list[tuple]:
    with results.ResultsStore(db).reading() as con:
        return con.execute(
            "SELECT status, latents_done, message FROM autointerp_runs ORDER BY started_at"
        ).fetchall()


def argv(db: str, sae_id: str, url: str, features: str, *extra: str) -> list[str]:
    return ["explain", "--db", db, "--sae", sae_id, "--base-url", url, "--features", features,
            "--scorers", "detection", "--no-progress", "--explain-top", "4",
            "--score-windows", "4", *extra]  # fmt: skip


def rerun_continues(db: str, sae_id: str, features: str, capsys) -> None:
    with FakeEndpoint() as fake:
        assert main(argv(db, sae_id, fake.base_url, features)) == 0
    assert "4 latents explained" in capsys.readouterr().out
    assert runs(db)[-1][:2] == ("finished", 4)


@pytest.mark.parametrize(
    "script, extra, reason",
    [
        (["500"] * 100, ["--max-retries", "0"], "HTTP 500"),
        (["timeout"] * 100, ["--max-retries", "1", "--timeout", "0.3"], "no answer within 0.3 s"),
    ],
    ids=["endpoint-down", "every-request-times-out"],
)
def test_endpoint_failure_before_any_latent_is_recorded(db, ready, capsys, script, extra, reason):
    path, sae_id = db
    with FakeEndpoint(script=script, hang_s=1.0) as fake:
        assert main(argv(path, sae_id, fake.base_url, ready, "--concurrency", "1", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and reason in err and "0 latents of 4" in err
    ((status, done, message),) = runs(path)
    assert status == "failed" and done == 0 and reason in message
    rerun_continues(path, sae_id, ready, capsys)


def test_unreachable_endpoint_is_recorded(db, ready, capsys):
    path, sae_id = db
    with FakeEndpoint() as fake:
        url = fake.base_url  # closed again: nothing listens there
    assert main(argv(path, sae_id, url, ready)) == 2
    assert "cannot list the models" in capsys.readouterr().err
    ((status, done, message),) = runs(path)
    assert status == "failed" and done == 0 and "cannot list the models" in message


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_the_first_request(db, ready, capsys):
    path, sae_id = db
    # Every request hangs: with several in flight, answered ones would finish latents first.
    with FakeEndpoint(script=["timeout"] * 1000, hang_s=60) as fake:
        command = [sys.executable, "-m", "saelab.cli", *argv(path, sae_id, fake.base_url, ready)]
        # A shell that starts a job in the background (`make test &`) makes it ignore SIGINT,
        # and the child would inherit that; a user's Ctrl-C reaches a default disposition.
        child = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
        )
        deadline = time.monotonic() + 60
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.requests and child.poll() is None
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 130
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
    ((status, done, message),) = runs(path)
    assert status == "interrupted" and done == 0 and "Ctrl-C" in message
    rerun_continues(path, sae_id, ready, capsys)


def test_sigterm_stops_explain_and_its_local_server_with_nothing_left(db, ready):
    path, sae_id = db
    command = [sys.executable, "-m", "saelab.cli", "explain", "--db", path, "--sae", sae_id,
               "--features", ready, "--scorers", "detection", "--no-progress"]  # fmt: skip
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.5)
        try:
            if runs(path):  # the run row exists once the server is up and requests go out
                time.sleep(1)
                break
        except Exception:  # the writer holds the file for a moment
            continue
    assert child.poll() is None, child.stderr.read()[-2000:]
    assert children(child.pid) == []
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "interrupted" in err, err[-2000:]
    ((status, _, message),) = runs(path)
    assert status == "interrupted" and "SIGTERM" in message


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_schema_2_file_gains_the_message_column_in_place(tmp_path):
    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)
    for step in MIGRATIONS[:2]:
        for statement in step:
            con.execute(statement)
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '2')")
    con.execute(
        "INSERT INTO autointerp_runs (run_id, status, latents_done) VALUES ('r1', 'finished', 5)"
    )
    con.close()
    with results.ResultsStore(path, "write").transaction() as con:
        rows = con.execute("SELECT run_id, status, latents_done, message FROM autointerp_runs")
        assert rows.fetchall() == [("r1", "finished", 5, None)]
        version = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'")
        assert int(version.fetchone()[0]) == results.SCHEMA_VERSION
