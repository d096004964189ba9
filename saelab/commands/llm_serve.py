"""`saelab llm-serve`: the embedded model behind saelab's local OpenAI-compatible server."""

from __future__ import annotations

import argparse
import signal

from saelab.commands.flags import add_fields, given

HELP = "serve the embedded model as an OpenAI-compatible endpoint"
ON_INTERRUPT = "stopped"


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.autointerp.server import ServeConfig

    flags = add_fields(
        p, ServeConfig, skip=("port",),
        helps={"model": "embedded name, HF folder or .gguf file",
               "threads": "torch threads (default: the free cores)"},
    )  # fmt: skip
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.set_defaults(flags=flags)


def check_port_free(host: str, port: int) -> None:
    """A one-line `UserError` when `port` on `host` cannot be bound (taken, or not allowed)."""
    import errno
    import socket

    from saelab.base.errors import UserError

    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port (1-65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is already in use (another server?); pass a free "
                    "--port, or stop what is listening there"
                ) from None
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def run(args: argparse.Namespace) -> int:
    from saelab.autointerp.server import LocalServer, ServeConfig

    cfg = ServeConfig(**given(args, args.flags), port=args.port)
    cfg.validate()
    if cfg.port:  # 0 lets the server pick a free port
        check_port_free(cfg.host, cfg.port)
    # SIGTERM stops it like Ctrl-C: the server is a thread of this process, nothing outlives it
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with LocalServer(cfg) as server:
            print(
                f"saelab llm-serve: {cfg.model} at {server.base_url} (model name "
                f"{server.model_id}); use it with `saelab explain --base-url {server.base_url}`. "
                "Ctrl-C stops it.",
                flush=True,
            )
            server.wait()
    except KeyboardInterrupt:
        print("saelab llm-serve: stopped", flush=True)
    return 0
