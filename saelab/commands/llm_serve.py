"""`saelab llm-serve`: the embedded model behind saelab's local OpenAI-compatible server."""

from __future__ import annotations

import argparse
import signal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "llm-serve", help="serve the embedded model as an OpenAI-compatible endpoint"
    )
    p.add_argument("--model", default="smollm2-135m", help="embedded name, HF folder or .gguf")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, help="torch threads (default: the free cores)")
    p.set_defaults(func=run)


def check_port_free(host: str, port: int) -> None:
    """A one-line `UserError` when `port` on `host` cannot be bound (taken, or not allowed)."""
    import errno
    import socket

    from saelab_base.errors import UserError

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
    from autointerp.server import LocalServer, ServeConfig

    if args.port:  # 0 lets the server pick a free port
        check_port_free(args.host, args.port)
    cfg = ServeConfig(model=args.model, host=args.host, port=args.port, threads=args.threads)
    # SIGTERM stops it like Ctrl-C: the server is a thread of this process, nothing outlives it
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with LocalServer(cfg) as server:
            print(
                f"saelab llm-serve: {args.model} at {server.base_url} (model name "
                f"{server.model_id}); use it with `saelab explain --base-url {server.base_url}`. "
                "Ctrl-C stops it.",
                flush=True,
            )
            server.wait()
    except KeyboardInterrupt:
        print("saelab llm-serve: stopped", flush=True)
    return 0
