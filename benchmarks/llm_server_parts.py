"""Where an explain-sized request's time goes on the local endpoint, old path against new.

    python benchmarks/llm_server_parts.py [--threads 1]

One process, the embedded smollm2-135m, the request of benchmarks/llm_server.py (383 prompt
tokens, 50 greedy tokens). Each part is the best of `--repeats`, the two paths alternated:
tokenizing; the prefill (transformers with a DynamicCache against the lean forward); one decode
step (transformers, the lean forward with 1 row and with 7 rows: a token and 6 drafts); the
floor of a decode step (one matrix-vector product over every weight matrix, all that reading
the weights costs); per-token sampling (log-softmax, argmax, the token's text); and a whole
request through the HTTP server against the same `generate` called directly. Saved as JSON in
benchmarks/results/llm_server_parts-cpu-t<threads>.json with the load average before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the repository first, and not this folder: a script's own folder must never shadow an
# installed package (tests/test_benchmark_names.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]

from benchmarks.llm_server import messages  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from openai import OpenAI
    from transformers import DynamicCache

    from saelab.autointerp.lean_llama import Chunk
    from saelab.autointerp.prefix_cache import PrefixCache
    from saelab.autointerp.server import Generator, LocalServer, ServeConfig

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    gen = Generator.load("smollm2-135m")
    gen.engine.prefix = PrefixCache(entries=0)  # every request computes its whole prompt
    model, lean = gen.model, gen.engine.model
    ids = gen.encode(messages(0))
    n = len(ids)
    parts = {}
    parts["tokenize_s"] = best(lambda: gen.encode(messages(0)), args.repeats)
    weights = [p for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name]
    weights += [model.lm_head.weight]
    vectors = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    with torch.inference_mode():

        def hf_prefill():
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
            return cache

        def lean_prefill():
            lean.forward([Chunk(cache, 0, ids, n - 1)])

        cache = lean.new_cache(n + 64)
        hf_cache = hf_prefill()
        lean_prefill()

        def hf_step():
            model(input_ids=torch.tensor([[42]]), cache=hf_cache, use_cache=True)
            hf_cache.crop(-1)

        parts["prefill_old_s"] = parts["prefill_new_s"] = float("inf")
        parts["decode_step_old_s"] = parts["decode_step_new_s"] = float("inf")
        for _ in range(args.repeats):  # alternated, so load shifts hit both alike
            parts["prefill_old_s"] = min(parts["prefill_old_s"], best(hf_prefill, 1))
            parts["prefill_new_s"] = min(parts["prefill_new_s"], best(lean_prefill, 1))
            parts["decode_step_old_s"] = min(parts["decode_step_old_s"], best(hf_step, 1))
            step = lambda: lean.forward([Chunk(cache, n, [42], 0)])  # noqa: E731
            parts["decode_step_new_s"] = min(parts["decode_step_new_s"], best(step, 1))
        parts["verify_step_7_rows_s"] = best(
            lambda: lean.forward([Chunk(cache, n, [42] * 7, 0)]), args.repeats
        )
        parts["weights_read_floor_s"] = best(
            lambda: [torch.nn.functional.linear(vectors[w.shape[1]], w) for w in weights],
            args.repeats,
        )
        logits = torch.randn(model.config.vocab_size)

        def sample():
            logp = torch.log_softmax(logits, -1)
            gen._item(int(logp.argmax()), logp, 0)

        parts["sampling_per_token_s"] = best(sample, args.repeats)
    direct = best(lambda: gen.generate(messages(0), 50), 3)
    with LocalServer(ServeConfig(threads=args.threads), generator=gen) as server:
        client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)

        def ask():
            client.chat.completions.create(
                model=server.model_id, messages=messages(0), max_tokens=50, temperature=0
            )

        ask()
        http = best(ask, 3)
    parts["request_direct_s"] = direct
    parts["request_http_s"] = http
    parts["http_json_overhead_s"] = http - direct
    out = {"machine": machine_info(), "threads": args.threads, "prompt_tokens": n,
           "load_avg_1min_before": load, "parts": parts}  # fmt: skip
    for name, value in parts.items():
        print(f"{name:>24}: {value * 1000:9.1f} ms")
    print(f"load average before: {load:.2f}; threads {args.threads}")
    path = ROOT / "benchmarks" / "results" / f"llm_server_parts-cpu-t{args.threads}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
