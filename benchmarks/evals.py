"""Evaluation cost: feature statistics and core metrics against the encoder matmul, and
DuckDB latency of one feature's dashboard.

1. Feature statistics of a 4608-latent TopK SAE over ~1M tokens (real activations of the
   embedded model; the store is read as often as needed to reach the token count) and the core
   eval over the same tokens, each beside a pass that only does the encoder matmul on the same
   batches. Target: bookkeeping (total − matmul) costs no more than the matmul itself.
2. p50/p95 latency of `feature_dashboard` (stats, examples, histograms, logits of one feature)
   on a results file holding an 18432-latent SAE. Target: p95 < 50 ms.

    python benchmarks/evals.py [--tokens 1000000] [--harvest-tokens 262144]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402
from saelab import resultstore as results  # noqa: E402
from saelab.activations.harvest import HarvestConfig, harvest  # noqa: E402
from saelab.activations.loader import ActivationLoader  # noqa: E402
from saelab.activations.store import ActivationStore  # noqa: E402
from saelab.evaluation.core.reconstruction import reconstruction_stats  # noqa: E402
from saelab.evaluation.features import FeatureStatsConfig
from saelab.evaluation.features.stats import feature_stats  # noqa: E402
from saelab.evaluation.runner import EvalConfig, evaluate  # noqa: E402
from saelab.sae import build_sae, make_config, save_sae  # noqa: E402

HOOK = "blocks.2.hook_resid_post"


def chunk_list(store: ActivationStore, tokens: int) -> list[int]:
    per_chunk = store.chunk_seqs * store.seq_len
    chunks = store.committed_chunks()
    reps = -(-tokens // (per_chunk * len(chunks)))
    return (chunks * reps)[: -(-tokens // per_chunk)]


@torch.no_grad()
def matmul_only(sae, store: ActivationStore, chunks: list[int], seqs_per_batch: int) -> float:
    """The encoder matmul alone on exactly the batches feature_stats encodes."""
    t0 = time.perf_counter()
    for c in chunks:
        acts = store.read_acts(HOOK, c).float()
        for s in range(0, acts.shape[0], seqs_per_batch):
            x = acts[s : s + seqs_per_batch].reshape(-1, sae.d_in)
            torch.addmm(sae.b_enc, x - sae.b_dec, sae.W_enc)
    return time.perf_counter() - t0


@torch.no_grad()
def matmul_only_batches(sae, batches) -> float:
    t0 = time.perf_counter()
    for x in batches:
        torch.addmm(sae.b_enc, x - sae.b_dec, sae.W_enc)
    return time.perf_counter() - t0


def bench_feature_stats(sae, store, tokens: int) -> dict:
    chunks = chunk_list(store, tokens)
    cfg = FeatureStatsConfig()
    matmul_only(sae, store, chunks[:2], cfg.seqs_per_batch)  # warm-up
    t_mm = matmul_only(sae, store, chunks, cfg.seqs_per_batch)
    t0 = time.perf_counter()
    stats = feature_stats(sae, store, HOOK, cfg, chunks=chunks)
    t_all = time.perf_counter() - t0
    return {
        "tokens": stats.n_tokens,
        "seconds": t_all,
        "matmul_seconds": t_mm,
        "matmul_fraction": t_mm / t_all,
        "bookkeeping_over_matmul": (t_all - t_mm) / t_mm,
    }


def bench_core(sae, store, tokens: int) -> dict:
    epochs = max(1, -(-tokens // ActivationLoader(store, HOOK, batch_size=4096).tokens_per_epoch))

    def batches():
        return ActivationLoader(store, HOOK, batch_size=4096, epochs=epochs, drop_last=False)

    t_mm = matmul_only_batches(sae, batches())
    t0 = time.perf_counter()
    stats = reconstruction_stats(sae, batches())
    t_all = time.perf_counter() - t0
    return {
        "tokens": stats.n,
        "seconds": t_all,
        "matmul_seconds": t_mm,
        "matmul_fraction": t_mm / t_all,
        "bookkeeping_over_matmul": (t_all - t_mm) / t_mm,
    }


def bench_dashboard_latency(store_url: str, tmp: str, d_sae: int, queries: int) -> dict:
    sae = build_sae(make_config("topk", d_sae=d_sae, k=64), d_in=576)
    folder = Path(tmp) / f"sae-{d_sae}"
    save_sae(sae, folder, meta={"hook_name": HOOK, "model_name": "smollm2-135m"})
    db = Path(tmp) / "latency.duckdb"
    t0 = time.perf_counter()
    evaluate(
        EvalConfig(
            sae=str(folder),
            acts=store_url,
            db=str(db),
            evals=["features"],
            settings={"features": {"split": "test"}},
        ),  # fmt: skip
        log=lambda *_: None,
    )
    build = time.perf_counter() - t0
    store = results.ResultsStore(db)
    (sae,) = results.list_saes(store)
    (count,) = store.query("SELECT count(*) AS n FROM feature_examples")
    rows = count["n"]
    rng = random.Random(0)
    with store.session():  # one connection, as the app holds one per page render
        results.feature_dashboard(store, sae.sae_id, 0)
        times = []
        for _ in range(queries):
            t = time.perf_counter()
            results.feature_dashboard(store, sae.sae_id, rng.randrange(d_sae))
            times.append((time.perf_counter() - t) * 1000)
    return {
        "d_sae": d_sae,
        "example_rows": rows,
        "queries": queries,
        "build_seconds": build,
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "max_ms": float(max(times)),
        "target_p95_ms": 50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--harvest-tokens", type=int, default=262_144)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--latency-d-sae", type=int, default=18432)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--store", help="reuse an existing store holding " + HOOK)
    parser.add_argument("--out", default="benchmarks/results/evals-cpu.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    tmp = tempfile.mkdtemp(prefix="saelab-bench-evals-")
    store_url = args.store or f"{tmp}/acts.zarr"
    if not args.store:
        harvest(
            HarvestConfig(out=store_url, hooks=[HOOK], tokens=args.harvest_tokens, progress=False)
        )
    store = ActivationStore(store_url)
    sae = build_sae(make_config("topk", d_sae=args.d_sae, k=32), d_in=576).eval()
    result = {
        "benchmark": "evals",
        "machine": machine_info(),
        "config": {
            "hook": HOOK,
            "d_sae": args.d_sae,
            "k": 32,
            "tokens": args.tokens,
            "store_tokens": store.committed_sequences() * store.seq_len,
            "feature_stats": FeatureStatsConfig().__dict__,
        },
        "feature_stats": bench_feature_stats(sae, store, args.tokens),
        "core": bench_core(sae, store, args.tokens),
        "dashboard_latency": bench_dashboard_latency(
            store_url, tmp, args.latency_d_sae, args.queries
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
