"""Evaluation cost: feature statistics and core metrics against the encoder matmul, and
DuckDB latency of one feature's dashboard.

1. Feature statistics of a 4608-latent TopK SAE over ~1M tokens (real activations of the
   embedded model; the store is read as often as needed to reach the token count) and the core
   eval over the same tokens, each beside a pass that only does the encoder matmul on the same
   batches. Target: bookkeeping (total − matmul) costs no more than the matmul itself.
2. p50/p95 latency of `feature_dashboard` (stats, examples, histograms, logits of one feature)
   on a results file holding an 18432-latent SAE. Target: p95 < 50 ms.

    python benchmarks/evals.py [--tokens 1000000] [--harvest-tokens 262144]

3. `--cost EVAL ...` (instead of 1 and 2): what each registered eval costs on one SAE at its
   default settings (benchmark size) on the embedded model's activations: wall time, the
   eval's own time, peak resident memory and tokens read. Each eval runs in a fresh process
   (so its peak memory is its own: the process's peak after the eval beside its resident size
   just before it, the model already loaded); names not registered are skipped with a note.
   The SAE is `--sae FOLDER` (a sweep member: the stability eval compares it with its seed
   twins beside it), or a random TopK SAE and its seed-1 twin; results go to
   benchmarks/results/evals-cost-<device>[-label].json.

    python benchmarks/evals.py --cost core loss features probing absorption stability \
        scr tpp ravel unlearning [--store ACTS --hook HOOK] [--sae FOLDER] \
        [--set loss.sequences=8 ...] [--label small]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# the repository first, and not this folder: a script's own folder must never shadow an
# installed package (tests/test_benchmark_names.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]

from benchmarks.machine import machine_info  # noqa: E402
from saelab import resultstore as results  # noqa: E402
from saelab.activations.harvest import HarvestConfig, harvest  # noqa: E402
from saelab.activations.loader import ActivationLoader  # noqa: E402
from saelab.activations.store import ActivationStore  # noqa: E402
from saelab.evaluation.core.reconstruction import reconstruction_stats  # noqa: E402
from saelab.evaluation.features import FeatureStatsConfig  # noqa: E402
from saelab.evaluation.features.stats import feature_stats  # noqa: E402
from saelab.evaluation.runner import EvalConfig, evaluate  # noqa: E402
from saelab.sae import build_sae, load_sae, make_config, save_sae  # noqa: E402

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


def seed_twins(folder: Path, hook: str, d_sae: int, k: int, store: ActivationStore) -> Path:
    """Two random TopK SAEs of one config, seeds 0 and 1, in `folder`; the seed-0 one's path."""
    meta = {"hook_name": hook, "model_name": store.attrs.get("model")}
    for seed in (0, 1):
        sae = build_sae(make_config("topk", d_sae=d_sae, k=k, seed=seed), d_in=store.width(hook))
        save_sae(sae, folder / f"topk-{d_sae}-k{k}-seed{seed}", meta=meta)
    return folder / f"topk-{d_sae}-k{k}-seed0"


def bench_eval_costs(
    names: list[str], sae: str, acts: str, hook: str, settings: dict, tmp: str
) -> dict:
    """Each eval of `names` on the SAE folder `sae`, one fresh process each (see `cost_child`);
    names not registered are skipped with a note."""
    import subprocess

    from saelab.evaluation.registry import eval_names

    known = eval_names()
    out: dict = {"evals": {}, "skipped": {}}
    for name in names:
        if name not in known:
            out["skipped"][name] = f"not a registered eval (registered: {', '.join(known)})"
            print(f"benchmarks/evals.py: {name}: skipped, not registered", file=sys.stderr)
            continue
        job = {"eval": name, "sae": sae, "acts": acts, "hook": hook,
               "db": f"{tmp}/cost-{name}.duckdb", "settings": settings.get(name)}  # fmt: skip
        done = subprocess.run(
            [sys.executable, __file__, "--cost-child", json.dumps(job)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            out["evals"][name] = {"error": " | ".join(tail)}
        else:
            out["evals"][name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"benchmarks/evals.py: {name}: {out['evals'][name]}", file=sys.stderr)
    return out


def _rss_mib(field: str) -> float | None:
    """A field of /proc/self/status (VmRSS: resident now, VmHWM: the peak) in MiB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cost_child(job: dict) -> None:
    """One eval in this (fresh) process; prints its cost as one JSON line."""
    import resource

    from saelab.evaluation.registry import get_eval

    spec = get_eval(job["eval"])
    store = ActivationStore(job["acts"])
    model, load_s = None, 0.0
    if spec.needs_model:
        from saelab.activations.models import load_model

        t0 = time.perf_counter()
        model = load_model(store.attrs["model"])
        load_s = time.perf_counter() - t0
    settings = {job["eval"]: job["settings"]} if job["settings"] else {}
    before = _rss_mib("VmRSS")
    t0 = time.perf_counter()
    evaluate(
        EvalConfig(sae=job["sae"], acts=job["acts"], db=job["db"], evals=[job["eval"]],
                   hook=job["hook"], settings=settings),
        model=model, log=lambda *_: None,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    peak = _rss_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (run,) = results.eval_runs(results.ResultsStore(job["db"]))
    metrics = results.metrics_long(results.ResultsStore(job["db"]))
    print(json.dumps({
        "seconds": wall,
        "eval_seconds": run.seconds,
        "model_load_seconds": load_s,
        "tokens_read": run.n_tokens,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "peak_over_before_mib": None if before is None else peak - before,
        "metrics": len(metrics),
        "with_interval": sum(m["ci_low"] is not None for m in metrics),
        "settings": dataclasses.asdict(spec.make_settings(job["settings"])),
    }))  # fmt: skip


def _settings(pairs: list[str]) -> dict:
    """--set EVAL.FIELD=VALUE pairs (VALUE read as JSON where it parses)."""
    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        name, _, field = key.partition(".")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[field] = parsed
    return out


def main_cost(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="saelab-bench-eval-cost-")
    store_url = args.store or f"{tmp}/acts.zarr"
    hook = args.hook or HOOK
    if not args.store:
        harvest(
            HarvestConfig(out=store_url, hooks=[hook], tokens=args.harvest_tokens, progress=False)
        )
    store = ActivationStore(store_url)
    sae = args.sae or str(seed_twins(Path(tmp) / "sweep", hook, args.d_sae, 32, store))
    settings = _settings(args.set)
    result = {
        "benchmark": "eval-cost",
        "machine": machine_info(),
        "command": " ".join(["python", *sys.argv]),
        "config": {
            "store": store_url if args.store else "harvested (builtin corpus)",
            "hook": hook,
            "store_tokens": store.committed_sequences() * store.seq_len,
            "sae": sae if args.sae else f"random TopK d_sae={args.d_sae} k=32 and its seed twin",
            "d_sae": load_sae(sae).d_sae,
            "settings": settings or "each eval's defaults",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_before": os.getloadavg(),
        },
        **bench_eval_costs(args.cost, sae, store_url, hook, settings, tmp),
    }
    result["config"]["load_average_after"] = os.getloadavg()  # a shared machine's timings vary
    label = f"-{args.label}" if args.label else ""
    device = "cpu" if result["machine"]["device"] == "cpu" else "gpu"
    path = Path(args.out or f"benchmarks/results/evals-cost-{device}{label}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cost", nargs="+", metavar="EVAL",
        help="measure these evals' cost instead (any registered name; 'all' for every one)",
    )  # fmt: skip
    parser.add_argument("--cost-child", help=argparse.SUPPRESS)
    parser.add_argument("--sae", help="--cost: the SAE folder (default: a random TopK SAE)")
    parser.add_argument("--hook", help=f"--cost: the hook (default {HOOK})")
    parser.add_argument(
        "--set", action="append", default=[], metavar="EVAL.FIELD=VALUE",
        help="--cost: an eval setting (JSON value), e.g. loss.sequences=8; repeatable",
    )  # fmt: skip
    parser.add_argument("--label", default="", help="--cost: suffix of the result file")
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--harvest-tokens", type=int, default=262_144)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--latency-d-sae", type=int, default=18432)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--store", help="reuse an existing store holding " + HOOK)
    parser.add_argument("--out", help="result JSON (default benchmarks/results/evals-cpu.json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cost_child:
        return cost_child(json.loads(args.cost_child))
    if args.cost:
        if args.cost == ["all"]:
            from saelab.evaluation.registry import eval_names

            args.cost = eval_names()
        return main_cost(args)
    args.out = args.out or "benchmarks/results/evals-cpu.json"

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
