"""Start the Streamlit server for a results file (what `saelab app` runs)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from saelab.app import db
from saelab.base.config import check_fields
from saelab.base.errors import UserError, check_host, listen_error

MAIN = Path(__file__).with_name("main.py")


@dataclass
class AppConfig:
    """How to serve the app."""

    db: str
    """The results file (DuckDB) to browse; opened read-only."""
    port: int = 8501
    """TCP port to listen on."""
    host: str = "127.0.0.1"
    """Address to bind; the default keeps the app on this machine."""
    migrate: bool = False
    """Bring an older-schema file to the current schema first (the only write the app makes)."""

    def __post_init__(self) -> None:
        check_fields(self)


def url(cfg: AppConfig) -> str:
    return f"http://{cfg.host}:{cfg.port}"


def prepare(cfg: AppConfig) -> str:
    """Check the address, the file (migrating it when asked) and the port; the absolute path to
    serve. The address is checked first so a mistyped flag never migrates the file."""
    check_host(cfg.host)
    if not 0 < cfg.port < 65536:
        raise UserError(f"port {cfg.port} is out of range (1 … 65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as err:
            raise listen_error(cfg.host, cfg.port, err) from None
    path = str(Path(cfg.db).expanduser().resolve())
    if cfg.migrate and Path(path).is_file():
        db.migrate(path)
    db.check_file(path)
    return path


def command(cfg: AppConfig) -> list[str]:
    """The streamlit command line (headless, no usage statistics, no file watcher)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(MAIN),
        "--server.port", str(cfg.port), "--server.address", cfg.host,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--global.developmentMode", "false",
        "--server.runOnSave", "false", "--client.toolbarMode", "minimal",
    ]  # fmt: skip


STOP_GRACE_S = 5.0
"""Seconds the streamlit server gets to stop after SIGTERM before it is killed: it first
waits for a running script (a generation in the playground), which on a busy machine took
longer than a process manager or a test waits (the server then outlived `saelab app`)."""


def _die_with_parent():
    """On Linux, a `preexec_fn` that has the kernel kill the server when `saelab app` dies,
    however it dies (SIGKILL included: then no handler of ours runs); elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    """Ask the server to stop, and kill it if it is still running `STOP_GRACE_S` later (it
    serves a read-only file: nothing is lost)."""
    proc.terminate()
    timer = threading.Timer(STOP_GRACE_S, lambda: proc.poll() is None and proc.kill())
    timer.daemon = True
    timer.start()


def serve(cfg: AppConfig) -> int:
    """Serve until interrupted; returns the server's exit status."""
    path = prepare(cfg)
    env = dict(os.environ, **{db.DB_ENV: path})
    print(f"saelab app: browsing {path} at {url(cfg)} (Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(
        command(cfg), env=env, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent()
    )
    # A SIGTERM (a process manager, a test's teardown) stops the server too, instead of
    # leaving it running with no parent.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: _stop(proc)) if main else None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        proc.wait()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
