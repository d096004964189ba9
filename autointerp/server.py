"""The offline default endpoint: the embedded model behind `transformers serve` on 127.0.0.1.

`LocalServer` starts transformers' own OpenAI-compatible server (its `serving` extra) as a
child process on a free local port, waits for /health, and stops it on exit. The model is
any spec `activations.models` understands (default: the embedded smollm2-135m folder).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from saelab_base.errors import UserError


@dataclass
class ServeConfig:
    """Where and what to serve."""

    model: str = "smollm2-135m"
    """An embedded model name, a local HF folder or a .gguf file."""
    host: str = "127.0.0.1"
    """Listen address (loopback by default: nothing outside this machine can reach it)."""
    port: int = 0
    """Port; 0 picks a free one."""
    startup_timeout_s: float = 300.0
    """Seconds to wait for the model to load."""


class LocalServer:
    """A running `transformers serve` child; use as a context manager."""

    def __init__(self, cfg: ServeConfig | None = None) -> None:
        self.cfg = cfg or ServeConfig()
        self.process: subprocess.Popen | None = None
        self.model_id = ""
        self.base_url = ""
        self._log = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from activations.models import resolve_model_folder

        folder, _ = resolve_model_folder(self.cfg.model)
        port = self.cfg.port or _free_port(self.cfg.host)
        self.model_id = str(folder)
        self.base_url = f"http://{self.cfg.host}:{port}/v1"
        self._log = tempfile.NamedTemporaryFile("w+", prefix="saelab-serve-", suffix=".log")
        command = [
            sys.executable, "-c", "from transformers.cli.transformers import main; main()",
            "serve", self.model_id, "--host", self.cfg.host, "--port", str(port),
            "--device", "cpu", "--log-level", "warning",
        ]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_healthy(port)

    def _wait_healthy(self, port: int) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        url = f"http://{self.cfg.host}:{port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise UserError(f"the local LLM server exited at start-up: {tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise UserError(
            f"the local LLM server did not answer within {self.cfg.startup_timeout_s:g} s"
        )

    def _log_tail(self) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        return text[-1] if text else "(no output)"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log:
            self._log.close()
            self._log = None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
