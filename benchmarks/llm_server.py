"""Local endpoint latency: saelab's server (speculative drafts on and off, and its old
transformers decode loop) and, unless `--only saelab`, `transformers serve` (the old default).

    python benchmarks/llm_server.py                  # 3 requests each, ~380 prompt + 50 tokens
    python benchmarks/llm_server.py --only saelab    # skip transformers serve (minutes)
    python benchmarks/llm_server.py --only saelab --out benchmarks/results/llm_server-cpu-busy.json

Explain-sized requests: a shared system prompt, then a ~330-token user message that differs
from its first word on, asking for a long answer; max_tokens 50, temperature 0; one at a time,
through the `openai` client, as `saelab explain` sends them. saelab's three paths serve the
same loaded model from three servers, request i going to each in turn (so load shifts hit all
three alike); each path keeps its own prefix cache. Reported per path: seconds per request
(each and the median), prompt and completion tokens, whether the answers are identical across
the paths, the ratio of the medians.

Concurrency (`saelab` path): 8 scoring-sized requests (one latent's detection prompts: the
same explanation, 8 excerpts; max_tokens 1, top 20 logprobs) and 4 explain-sized ones (with
drafts and without), each set sent one at a time and then 4 at a time to a fresh engine
(empty prefix cache), the modes alternated, best of `ROUNDS`; the scoring set also one at a
time with no prefix reuse. Reported: seconds per set, the speedup, and whether the answers
agree. Also recorded: the sgemm rate and the floor of one decode step
(reading every weight once) at the run's torch threads. The machine's 1-minute load average is recorded before each
part: on a shared CPU it moves these figures more than anything else. Results are printed and
saved as JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
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
# the repository first, and not this folder: a script's own folder must never shadow an
# installed package (tests/test_benchmark_names.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]

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


PATHS = ("saelab", "saelab_no_speculate", "saelab_old_path")


def saelab_servers(n: int, threads: int | None) -> dict:
    """The three paths, request i to each in turn; then the concurrency measurements."""
    import torch

    from saelab.autointerp.engine import Engine
    from saelab.autointerp.server import Generator, LocalServer, ServeConfig

    base = Generator.load("smollm2-135m")
    lean = base.engine.model
    gens = {
        "saelab": base,
        "saelab_no_speculate": Generator(
            base.model, base.tokenizer, engine=Engine(lean, speculate=False)
        ),
        "saelab_old_path": Generator(base.model, base.tokenizer, lean=False),
    }
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(LocalServer(ServeConfig(threads=threads), generator=g))
            for name, g in gens.items()
        }
        clients = {name: _client(s.base_url) for name, s in servers.items()}
        for name in PATHS:  # warm-up (first-call costs are not a request's latency)
            clients[name].chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        out = {name: {"seconds": [], "prompt_tokens": [], "completion_tokens": [], "texts": []}
               for name in PATHS}  # fmt: skip
        loads = []
        for i in range(n):
            loads.append(os.getloadavg()[0])
            for name in PATHS:
                started = time.perf_counter()
                reply = clients[name].chat.completions.create(
                    model="smollm2-135m", messages=messages(i), max_tokens=50, temperature=0
                )
                r = out[name]
                r["seconds"].append(time.perf_counter() - started)
                r["prompt_tokens"].append(reply.usage.prompt_tokens)
                r["completion_tokens"].append(reply.usage.completion_tokens)
                r["texts"].append(reply.choices[0].message.content)
        threads_used = torch.get_num_threads()
        for name in PATHS:
            r = out[name]
            r["median_s"] = statistics.median(r["seconds"])
            r["torch_threads"] = threads_used
            r["reused_prompt_tokens"] = gens[name].stats.reused_prompt_tokens
            r["load_avg_1min_before_each"] = loads
            r["load_avg_1min_before"] = loads[0]
        stats = base.engine.stats
        out["saelab"]["drafted_tokens"] = stats.drafted_tokens
        out["saelab"]["accepted_draft_tokens"] = stats.accepted_draft_tokens
        same = all(out[name]["texts"] == out["saelab_old_path"]["texts"] for name in PATHS)
        for name in PATHS:
            out[name]["identical_to_old_path"] = same
        out["concurrent"] = concurrency(base, lean, threads)
        out["rates"] = rates(base.model)
    return out


def scoring_messages(j: int) -> list[dict]:
    from saelab.autointerp.prompts import prompt

    excerpt = " ".join(
        f"{w} {TOPICS[(j + k) % len(TOPICS)]}" for k, w in enumerate(
            "the report on <<rising>> water said that the town and its old stone bridge "
            "were closed for a week while crews checked the banks".split()
        )
    )  # fmt: skip
    return prompt("detection_one").messages(
        explanation="words about rivers, water levels and floods in local news reports",
        example=excerpt,
    )


ROUNDS = 2
"""Each concurrency measurement is repeated, the modes alternated; the best of each is kept."""


def concurrency(base, lean, threads: int | None) -> dict:
    """A set of requests one at a time, then 4 at a time, each to a fresh engine."""
    from concurrent.futures import ThreadPoolExecutor

    from saelab.autointerp.engine import Engine
    from saelab.autointerp.prefix_cache import PrefixCache
    from saelab.autointerp.server import Generator, LocalServer, ServeConfig

    explain = ([messages(i) for i in range(4)], dict(max_tokens=50, temperature=0))
    sets = {
        "scoring": ([scoring_messages(j) for j in range(8)],
                    dict(max_tokens=1, logprobs=True, top_logprobs=20), True),
        "explain": (*explain, True),
        "explain_no_speculate": (*explain, False),
    }  # fmt: skip
    result = {}
    for set_name, (requests, params, speculate) in sets.items():
        runs = {"sequential": 1, "concurrent_4": 4}
        if set_name == "scoring":
            runs = {"sequential_no_reuse": 1, **runs}
        part = {"requests": len(requests), "load_avg_1min_before": os.getloadavg()[0]}
        answers = {}
        for _ in range(ROUNDS):
            for mode, width in runs.items():
                prefix = PrefixCache(entries=0) if mode.endswith("no_reuse") else PrefixCache()
                engine = Engine(lean, prefix=prefix, speculate=speculate)
                gen = Generator(base.model, base.tokenizer, engine=engine)
                with LocalServer(ServeConfig(threads=threads), generator=gen) as server:
                    client = _client(server.base_url)

                    def ask(m: list[dict], client=client, params=params):
                        reply = client.chat.completions.create(
                            model="smollm2-135m", messages=m, **params
                        )
                        c = reply.choices[0]
                        top = [] if c.logprobs is None else [
                            (t.token, round(t.logprob, 3))
                            for t in c.logprobs.content[0].top_logprobs
                        ]  # fmt: skip
                        return c.message.content, top

                    started = time.perf_counter()
                    with ThreadPoolExecutor(width) as pool:
                        answers[mode] = list(pool.map(ask, requests))
                    seconds = time.perf_counter() - started
                part.setdefault(f"{mode}_s_each", []).append(seconds)
                part[f"{mode}_s"] = min(part[f"{mode}_s_each"])
                part[f"{mode}_steps"] = engine.stats.steps
                part[f"{mode}_batched_steps"] = engine.stats.batched_steps
                part[f"{mode}_reused_prompt_tokens"] = gen.stats.reused_prompt_tokens
        part["speedup_concurrent_4"] = part["sequential_s"] / part["concurrent_4_s"]
        texts = {mode: [a[0] for a in ans] for mode, ans in answers.items()}
        part["same_texts"] = len({json.dumps(t) for t in texts.values()}) == 1
        top5 = {mode: [[t for t, _ in a[1][:5]] for a in ans] for mode, ans in answers.items()}
        part["same_top5_tokens"] = len({json.dumps(t) for t in top5.values()}) == 1
        result[set_name] = part
    return result


def rates(model) -> dict:
    """The machine's sgemm rate (1024^3, float32) and the floor of one decode step (a
    matrix-vector product over every weight matrix: all that reading the weights costs), at the
    torch threads of the run."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    gflops = 2 * 1024**3 * 5 / (time.perf_counter() - started) / 1e9
    weights = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    weights.append(model.lm_head.weight)
    vectors = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    floors = []
    with torch.inference_mode():
        for _ in range(5):
            started = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(vectors[w.shape[1]], w)
            floors.append(time.perf_counter() - started)
    read = sum(w.numel() * w.element_size() for w in weights)
    return {
        "torch_threads": torch.get_num_threads(),
        "sgemm_gflops": gflops,
        "decode_step_floor_s": min(floors),
        "weights_read_GBps": read / min(floors) / 1e9,
    }


def _client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--only", choices=["saelab", "transformers"])
    p.add_argument("--threads", type=int, help="torch threads (default: the free cores)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_server-cpu.json"))
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = {"machine": machine_info(), "requests": args.requests, "servers": {}}
    servers = out["servers"]
    if args.only != "transformers":
        result = saelab_servers(args.requests, args.threads)
        out["concurrent"] = result.pop("concurrent")
        out["machine"]["rates"] = result.pop("rates")
        servers.update(result)
    if args.only != "saelab":
        load = os.getloadavg()[0]
        servers["transformers"] = transformers_serve(args.requests)
        servers["transformers"]["load_avg_1min_before"] = load
    for name, r in servers.items():
        print(
            f"{name:>20}: median {r['median_s']:.2f} s per request "
            f"({', '.join(f'{s:.2f}' for s in r['seconds'])}); prompt tokens "
            f"{r['prompt_tokens']}, completion tokens {r['completion_tokens']}; load average "
            f"before {r['load_avg_1min_before']:.2f}",
            flush=True,
        )
    if "saelab" in servers:
        old = servers["saelab_old_path"]["median_s"]
        out["speedup_vs_old_path"] = old / servers["saelab"]["median_s"]
        out["speedup_no_speculate_vs_old_path"] = old / servers["saelab_no_speculate"]["median_s"]
        print(
            f"saelab vs its old decode loop: {out['speedup_vs_old_path']:.2f}x (no drafts: "
            f"{out['speedup_no_speculate_vs_old_path']:.2f}x); answers identical: "
            f"{servers['saelab']['identical_to_old_path']}"
        )
        for name, part in out["concurrent"].items():
            print(f"{name:>20}: {json.dumps(part)}")
    if len(servers) > 3:
        out["speedup"] = servers["transformers"]["median_s"] / servers["saelab"]["median_s"]
        print(f"saelab's server is {out['speedup']:.1f}x faster per request (median)")
    path = Path(args.out)
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
