"""Auto-interp throughput against a fake endpoint with a fixed latency, at several concurrencies.

    python benchmarks/autointerp.py                 # concurrency 1, 8, 32; latency 200 ms

A synthetic results database (feature examples: random windows of the builtin corpus's words)
feeds `explain_features` with every explainer and scorer; the fake endpoint runs in its own
process and answers each request after `--latency` seconds. The ceiling for concurrency c is
c / latency requests per second; dividing by the requests one latent needs (measured) gives
the latents per minute the limit allows, and `efficiency` is the measured fraction of it
(target: at least 0.8). Results are printed and saved as JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from saelab import resultstore as results  # noqa: E402
from saelab.autointerp.config import ExplainConfig, LLMConfig, default_scorers  # noqa: E402
from saelab.autointerp.pipeline import explain_features  # noqa: E402

WINDOW, VOCAB = 24, 2000
KINDS = {"top": 20, "quantile": 16, "random": 8, "nonactivating": 12}


def synthetic_db(path: str, d_sae: int, seed: int = 0) -> str:
    """An SAE with d_sae latents, each with stored windows of every kind."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    words = _corpus_words(VOCAB)
    cols = {k: [] for k in ("feature", "kind", "band", "rank", "seq", "pos", "window_start",
                            "activation", "tokens", "acts")}  # fmt: skip
    seq = 0
    for f in range(d_sae):
        for kind, n in KINDS.items():
            for rank in range(n):
                acts = np.zeros(WINDOW, np.float32)
                if kind != "nonactivating":
                    hot = rng.choice(WINDOW, 3, replace=False)
                    acts[hot] = rng.uniform(0.5, 5.0, 3)
                cols["feature"].append(f)
                cols["kind"].append(kind)
                cols["band"].append(rank % 4 if kind == "quantile" else -1)
                cols["rank"].append(rank)
                cols["seq"].append(seq)
                cols["pos"].append(int(acts.argmax()))
                cols["window_start"].append(0)
                cols["activation"].append(float(acts.max()))
                cols["tokens"].append(rng.integers(0, VOCAB, WINDOW).tolist())
                cols["acts"].append(acts.tolist())
                seq += 1
    n = len(cols["feature"])
    examples = pa.table(
        {"sae_id": ["bench"] * n, "feature": pa.array(cols["feature"], pa.int32()),
         "kind": cols["kind"], "band": pa.array(cols["band"], pa.int32()),
         "rank": pa.array(cols["rank"], pa.int32()), "seq": pa.array(cols["seq"], pa.int64()),
         "pos": pa.array(cols["pos"], pa.int32()),
         "window_start": pa.array(cols["window_start"], pa.int32()),
         "activation": cols["activation"], "tokens": pa.array(cols["tokens"], pa.list_(pa.int32())),
         "acts": pa.array(cols["acts"], pa.list_(pa.float32()))}
    )  # fmt: skip
    features = pa.table(
        {"sae_id": ["bench"] * d_sae, "feature": pa.array(range(d_sae), pa.int32()),
         "n_tokens": pa.array([10**6] * d_sae, pa.int64()), "n_active": pa.array([1000] * d_sae, pa.int64()),
         "density": [1e-3] * d_sae, "log10_density": [-3.0] * d_sae, "max_act": [5.0] * d_sae,
         "mean_act": [2.0] * d_sae, "dead": [False] * d_sae, "dense": [False] * d_sae,
         "too_few_examples": [False] * d_sae}
    )  # fmt: skip
    record = results.SAERow(
        "bench", "bench", "-", "topk", 8, d_sae, "h", "m", "msha", "{}", "h", "w"
    )
    run = results.EvalRun("bench", "features", {}, "-", 10**6, 0.0, {},
                          tables={"features": features, "feature_examples": examples})  # fmt: skip
    store = results.ResultsStore(path, "write")
    results.write_eval_run(store, record, run)
    results.write_vocab(store, "msha", words)
    return path


def _corpus_words(n: int) -> list[str]:
    """The n most frequent words of the builtin corpus (windows read like text to the embedder)."""
    from collections import Counter

    from saelab.activations.corpus import load_corpus

    counts = Counter(w for text in load_corpus("builtin")["text"][:2000] for w in text.split())
    return [" " + w for w, _ in counts.most_common(n)]


def start_fake(latency: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "saelab.autointerp.fake_endpoint",
        "--port",
        str(port),
        "--latency",
        str(latency),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/models", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("fake endpoint did not start")


def measure(
    url: str, db: str, concurrency: int, latents: int, first: int, latency: float, scorers: list
) -> dict:
    cfg = ExplainConfig(
        db=db, sae="bench", features=f"{first}:{first + latents}", progress=False,
        llm=LLMConfig(base_url=url, model="fake-llm", concurrency=concurrency), scorers=scorers,
    )  # fmt: skip
    summary = explain_features(cfg)
    per_latent = summary.usage.requests / latents
    measured = latents / summary.seconds * 60
    ceiling = concurrency / latency / per_latent * 60
    return {
        "concurrency": concurrency,
        "scorers": scorers,
        "latents": latents,
        "seconds": summary.seconds,
        "requests": summary.usage.requests,
        "requests_per_latent": per_latent,
        "latents_per_min": measured,
        "ceiling_latents_per_min": ceiling,
        "efficiency": measured / ceiling,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=40.0, help="target run time per setting")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/autointerp-cpu.json"))
    args = p.parse_args()
    per_latent_guess = 26
    # every concurrency with all scorers; then the highest once more without the embedding
    # scorer, whose local model (not the endpoint) is what limits it on a small CPU
    SCORERS = default_scorers()
    settings = [(c, list(SCORERS)) for c in args.concurrency]
    settings.append((max(args.concurrency), [s for s in SCORERS if s != "embedding"]))
    sizes = [max(4, int(args.seconds * c / args.latency / per_latent_guess)) for c, _ in settings]
    with tempfile.TemporaryDirectory() as tmp:
        db = synthetic_db(str(Path(tmp) / "bench.duckdb"), sum(sizes))
        fake, url = start_fake(args.latency)
        from saelab.activations.text_embedding import embed

        embed(["warm-up"])  # load the embedding model before the clock starts
        try:
            rows, first = [], 0
            for (c, scorers), n in zip(settings, sizes):
                row = measure(url, db, c, n, first, args.latency, scorers)
                first += n
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            fake.terminate()
    result = {
        "benchmark": "autointerp",
        "machine": machine_info(),
        "config": {
            "latency_s": args.latency,
            "window": WINDOW,
            "kinds": KINDS,
            "explainers": ["llm", "baseline"],
        },
        "runs": rows,
        "target_efficiency": 0.8,
        "checks": {
            f"c{r['concurrency']}_{'+'.join(r['scorers'])}_efficiency_ge_0.8": r["efficiency"]
            >= 0.8
            for r in rows
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
