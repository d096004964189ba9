"""`saelab llm-serve`: the embedded model behind a local OpenAI-compatible server."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "llm-serve", help="serve the embedded model as an OpenAI-compatible endpoint"
    )
    p.add_argument("--model", default="smollm2-135m", help="embedded name, HF folder or .gguf")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autointerp.server import LocalServer, ServeConfig

    with LocalServer(ServeConfig(model=args.model, host=args.host, port=args.port)) as server:
        print(
            f"saelab llm-serve: {args.model} at {server.base_url} (model name {server.model_id}); "
            f"use it with `saelab explain --base-url {server.base_url}`. Ctrl-C stops it.",
            flush=True,
        )
        while server.process and server.process.poll() is None:
            time.sleep(1)
    return 0
