"""Local endpoint latency: `transformers serve` (the old default) against saelab's own server.

    python benchmarks/llm_server.py                  # 3 requests each, ~300 prompt + 50 tokens
    python benchmarks/llm_server.py --only saelab    # skip transformers serve

Both serve the embedded smollm2-135m on 127.0.0.1 and get the same explain-sized chat requests
(a shared system prompt, then a ~300-token user message that differs from the first word on,
asking for a long answer; max_tokens 50, temperature 0), one at a time, through the `openai`
client, as `saelab explain` sends them. Reported per server: seconds per request (each and
the median), prompt and completion tokens, and the ratio of the medians, measured in one run.
The machine's 1-minute load average is recorded before each server: on a shared CPU it moves
these figures more than anything else. Results are printed and saved as JSON in
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402

SYSTEM = "You are a meticulous analyst of text. You explain patterns in short, clear sentences."
TOPICS = ["rivers", "markets", "elections", "bridges", "orchestras", "glaciers", "vaccines"]


def messages(i: int) -> list[dict]:
    topic = TOPICS[i % len(TOPICS)]
    body = " ".join(
        f"Excerpt {j} about {topic}: the {topic} report noted changes in volume, timing and "
        f"the people involved, with figures from {1990 + j} onwards." for j in range(11)
    )  # fmt: skip
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{topic.title()}. {body}\nDescribe these excerpts at length."},
    ]


def measure(base_url: str, model: str, n: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    client.chat.completions.create(  # warm-up (first-call costs are not a request's latency)
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    seconds, prompt, completion = [], [], []
    for i in range(n):
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model=model, messages=messages(i), max_tokens=50, temperature=0
        )
        seconds.append(time.perf_counter() - started)
        prompt.append(reply.usage.prompt_tokens)
        completion.append(reply.usage.completion_tokens)
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_serve(n: int) -> dict:
    """The old default: `transformers serve` as a child process (stopped afterwards)."""
    from saelab.activations.models import resolve_model_folder

    folder, _ = resolve_model_folder("smollm2-135m")
    port = free_port()
    command = [
        sys.executable, "-c", "from transformers.cli.transformers import main; main()",
        "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
        "--log-level", "warning",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if child.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"transformers serve exited: {log.read()[-500:]!r}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            return measure(f"http://127.0.0.1:{port}/v1", str(folder), n)
        finally:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def saelab_server(n: int) -> dict:
    import torch

    from saelab.autointerp.server import LocalServer

    with LocalServer() as server:
        result = measure(server.base_url, server.model_id, n)
        result["torch_threads"] = torch.get_num_threads()
        result["reused_prompt_tokens"] = server.stats.reused_prompt_tokens
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--only", choices=["saelab", "transformers"])
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = {"saelab": saelab_server, "transformers": transformers_serve}
    out = {"machine": machine_info(), "requests": args.requests, "servers": {}}
    for name, fn in runs.items():
        if args.only and name != args.only:
            continue
        load = os.getloadavg()[0]
        result = fn(args.requests)
        result["load_avg_1min_before"] = load
        out["servers"][name] = result
        print(
            f"{name:>12}: median {result['median_s']:.2f} s per request "
            f"({', '.join(f'{s:.2f}' for s in result['seconds'])}); prompt tokens "
            f"{result['prompt_tokens']}, completion tokens {result['completion_tokens']}; "
            f"load average before {load:.1f}",
            flush=True,
        )
    servers = out["servers"]
    if len(servers) == 2:
        out["speedup"] = servers["transformers"]["median_s"] / servers["saelab"]["median_s"]
        print(f"saelab's server is {out['speedup']:.1f}x faster per request (median)")
    path = ROOT / "benchmarks" / "results" / "llm_server-cpu.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
