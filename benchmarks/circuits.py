"""Sparse feature circuits: seconds and peak memory of node attribution (AtP, IG) and edges,
batched against looped edges, a scaling note, and the SVA circuit's curves.

    python -m benchmarks.circuits [--sae DIR ...] [--acts STORE] [--prompts 32]

Without --sae/--acts it harvests a small store (three residual hooks) and trains one TopK SAE
per hook first (minutes on 2 CPU cores). Every measurement runs in its own process, so each
peak RSS is its own (`peak_rss_mb`; `rss_rise_mb` = peak minus the RSS just before the timed
part). Writes benchmarks/results/circuits-<device>.json.

`edges-compare` times the fast edges (`batched=True`) against the per-node loop in one process,
alternated twice, at the circuit sizes `--edge-sizes` (top-N nodes; default 39 and 358), and
records both edge sets' agreement. With `--only KIND ...` the other measurements already in
the JSON are kept (each result records the commit it ran at).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOKS = ["blocks.3.hook_resid_post", "blocks.6.hook_resid_post", "blocks.9.hook_resid_post"]


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(out: Path, tokens: int, d_sae: int, k: int) -> tuple[list[str], str]:
    from saelab.activations.harvest import HarvestConfig, harvest
    from saelab.activations.loader import ActivationLoader
    from saelab.sae.registry import make_config
    from saelab.sae.trainer import TrainConfig, train

    store = str(out / "acts.zarr")
    harvest(HarvestConfig(out=store, hooks=HOOKS, tokens=tokens, seq_len=64, resume=True))
    folders = []
    for hook in HOOKS:
        name = "L" + hook.split(".")[1]
        folder = out / name
        if not (folder / "cfg.json").exists():
            loader = ActivationLoader(store, hook, batch_size=512, seed=0, epochs=8)
            cfg = make_config("topk", d_sae=d_sae, k=k, name=name)
            train(
                cfg, loader, TrainConfig(tokens=8 * tokens, hook=hook, progress=False), out=folder
            )
        folders.append(str(folder))
    return folders, store


def one(kind: str, args) -> dict:
    """One measurement in this process."""
    import torch

    from saelab.activations.corpus import bos_token_id
    from saelab.activations.models import load_model
    from saelab.circuits.attribution import LogitDiff, attribute, patch_sides, path_gradient
    from saelab.circuits.edges import edge_effects
    from saelab.circuits.nodes import aggregate
    from saelab.circuits.splice import load_spliced
    from saelab.circuits.tasks import load_task

    model = load_model()
    spliced = load_spliced(model, args.sae)
    task = load_task(args.task, model.tokenizer, bos_token_id(model.tokenizer), args.prompts)
    metric = LogitDiff(task.correct, task.wrong)
    sides = patch_sides(spliced, task.patch, "patch")
    out: dict = {
        "kind": kind,
        "task": args.task,
        "prompts": args.prompts,
        "tokens_per_prompt": int(task.clean.shape[1]),
    }
    if kind in ("nodes-atp", "nodes-ig"):
        before, t = _rss_mb(), time.perf_counter()
        method = kind.split("-")[1]
        effects, _ = attribute(spliced, task.clean, metric, sides, method, steps=10)
        out["seconds"] = time.perf_counter() - t
        out["n_nodes"] = len(aggregate(effects, True))
    elif kind.startswith("edges"):
        effects, _ = attribute(spliced, task.clean, metric, sides, "atp")
        nodes = aggregate(effects, True)
        kept = [n for n in nodes if abs(n.effect) >= args.node_threshold]
        if args.kept:  # a circuit size rather than a threshold: the top `kept` nodes
            kept = nodes[: args.kept]
            args.node_threshold = abs(kept[-1].effect)
        logits, states, _ = spliced.run_spliced(task.clean, grads=True)
        values = metric(logits, {})
        outs = [states[h].out for h in spliced.hooks]
        grads = dict(zip(spliced.hooks, torch.autograd.grad(values.sum(), outs)))
        if kind == "edges-compare":  # both ways in one process, alternating, twice
            before, times = _rss_mb(), {"batched": [], "looped": []}
            found = {}
            out["loadavg_1m_before"] = os.getloadavg()[0]
            for _ in range(2):
                for name, flag in (("batched", True), ("looped", False)):
                    t = time.perf_counter()
                    edges = edge_effects(
                        spliced, task.clean, states, grads, sides, kept, batch=64, batched=flag
                    )
                    times[name].append(time.perf_counter() - t)
                    found.setdefault(name, {(e.up, e.down): e.effect for e in edges})
            out["loadavg_1m_after"] = os.getloadavg()[0]
            a, b = found["batched"], found["looped"]
            out.update(seconds=times, kept_nodes=len(kept), node_threshold=args.node_threshold)
            out["edges_nonzero"] = len(b)
            out["threads"] = torch.get_num_threads()
            out["speedup_best_of_two"] = min(times["looped"]) / min(times["batched"])
            out["same_keys"] = a.keys() == b.keys()
            out["max_relative_difference"] = max(
                (abs(a[k] - b[k]) / (abs(b[k]) + 1e-6) for k in b if k in a), default=0.0
            )
            big = [k for k in b if abs(b[k]) >= 1e-4]  # edges well above float32 noise
            out["max_relative_difference_edges_above_1e-4"] = max(
                (abs(a[k] - b[k]) / abs(b[k]) for k in big if k in a), default=0.0
            )
            out["peak_rss_mb"] = _peak_mb()
            out["rss_rise_mb"] = _peak_mb() - before
            return out
        batched = kind != "edges-looped"
        before, t = _rss_mb(), time.perf_counter()
        edges = edge_effects(
            spliced, task.clean, states, grads, sides, kept, batch=64, batched=batched
        )
        out["seconds"] = time.perf_counter() - t
        out["kept_nodes"] = len(kept)
        out["edges_nonzero"] = len(edges)
        out["edges"] = {f"{e.up.label()}>{e.down.label()}": e.effect for e in edges}
        out["node_threshold"] = args.node_threshold
    elif kind == "ig-convergence":
        from saelab.circuits.attribution import exact_effect, metric_values

        sub = task.subset(range(min(8, len(task))))
        m = LogitDiff(sub.correct, sub.wrong)
        hook = spliced.hooks[0]
        _, st, _ = spliced.run_spliced(sub.clean)
        _, sp, _ = spliced.run_spliced(sub.patch)
        delta = sp[hook].x - st[hook].x
        delta[:, 0] = 0
        before, t = _rss_mb(), time.perf_counter()
        exact = exact_effect(
            spliced, sub.clean, m, hook, delta, metric_values(spliced, sub.clean, m)
        )
        errs = {}
        for steps in (1, 5, 10, 50):
            g = path_gradient(spliced, sub.clean, m, hook, delta, steps, step_batch=10)
            errs[str(steps)] = float(((g * delta).sum((1, 2)) - exact).abs().mean())
        out.update(
            seconds=time.perf_counter() - t,
            hook=hook,
            mean_abs_exact=float(exact.abs().mean()),
            mean_abs_error=errs,
            prompts=len(sub),
        )
    elif kind == "circuit":
        from saelab.circuits.run import CircuitConfig, run_circuit

        before, t = _rss_mb(), time.perf_counter()
        cfg = CircuitConfig(
            sae=args.sae,
            task=args.task,
            n_prompts=args.prompts,
            acts=args.acts,
            node_threshold=args.node_threshold,
            progress=False,
            check_edges=32,
        )
        res = run_circuit(cfg, model=model, log=lambda s: None)
        out.update(
            seconds=time.perf_counter() - t,
            clean_accuracy=res.clean_accuracy,
            m_clean=res.m_clean,
            m_patch=res.m_patch,
            kept_nodes=len(res.kept),
            nodes=len(res.nodes),
            edges=len(res.edges),
            faithfulness=res.faithfulness,
            completeness=res.completeness,
            ablation=res.curves.ablation,
            error_policy=res.curves.error_policy,
            m_full=res.curves.m_full,
            m_empty=res.curves.m_empty,
            curve=[
                {"n": p.n_nodes, "faithfulness": p.faithfulness, "completeness": p.completeness}
                for p in res.curves.points
            ],
            edge_correlation=res.edge_correlation,
            edges_checked=len(res.edge_checks),
            edge_checks=[[c.edge.effect, c.measured] for c in res.edge_checks],
        )
    out["peak_rss_mb"] = _peak_mb()
    out["rss_rise_mb"] = _peak_mb() - before
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sae", nargs="+")
    p.add_argument("--acts")
    p.add_argument("--task", default="sva")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--node-threshold", type=float, default=0.02)
    p.add_argument(
        "--kept", type=int, default=0, help="edges: the top N nodes (overrides the threshold)"
    )
    p.add_argument(
        "--edge-sizes",
        type=int,
        nargs="+",
        default=[39, 358],
        help="kept nodes of the edges-compare runs",
    )
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--work", default=None, help="folder for the store and SAEs it prepares")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--only", nargs="+", help="run only these measurements")
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args)))
        return
    from benchmarks.machine import machine_info

    if not args.sae:
        work = Path(args.work or tempfile.mkdtemp(prefix="circuits-bench-"))
        args.sae, args.acts = prepare(work, args.tokens, args.d_sae, args.k)
    runs = [
        ("nodes-atp", {}),
        ("nodes-ig", {}),
        ("edges-batched", {}),
        ("edges-looped", {}),
        ("ig-convergence", {}),
        ("circuit", {}),
        # scaling: longer prompts (sva-rc: 7 tokens vs 3), and more kept nodes
        ("edges-batched", {"--task": "sva-rc"}),
        ("edges-batched", {"--node-threshold": str(args.node_threshold / 4)}),
    ] + [("edges-compare", {"--kept": str(n)}) for n in args.edge_sizes]
    if args.only:
        runs = [r for r in runs if r[0] in args.only]
    results = []
    for kind, extra in runs:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.circuits",
            "--one",
            kind,
            "--sae",
            *args.sae,
            "--task",
            args.task,
            "--prompts",
            str(args.prompts),
            "--node-threshold",
            str(args.node_threshold),
            "--kept",
            "0",
        ]
        if args.acts:
            cmd += ["--acts", args.acts]
        for flag, value in extra.items():
            cmd[cmd.index(flag) + 1] = value
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"measurement {kind} failed")
        res = json.loads(line[0][7:])
        res["git_commit"] = machine_info().get("git_commit")
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k not in ("edges", "edge_checks")}))
    device = machine_info()["device"].split()[0].lower()
    path = Path(__file__).parent / "results" / f"circuits-{device}.json"
    summary = {}
    if args.only and path.exists():  # a partial run: keep the other measurements
        old = json.loads(path.read_text())
        summary = old.get("summary", {})
        results = [r for r in old.get("results", []) if r["kind"] not in args.only] + results
    compares = [r for r in results if r["kind"] == "edges-compare"]
    if compares:
        summary["same_process_edges"] = {
            "note": "batched (circuits/edges_fast.py) and looped (the per-node reference) "
            "alternated twice in one process (edges-compare), task "
            f"{args.task}, {args.prompts} prompts; loadavg_1m_before/after per run",
            "runs": [
                {
                    "threshold": r["node_threshold"],
                    "kept": r["kept_nodes"],
                    "edges": r["edges_nonzero"],
                    "batched_s": r["seconds"]["batched"],
                    "looped_s": r["seconds"]["looped"],
                    "threads": r["threads"],
                    "speedup_best_of_two": r["speedup_best_of_two"],
                    "same_keys": r["same_keys"],
                    "max_relative_difference": r["max_relative_difference"],
                    "max_relative_difference_edges_above_1e-4": r[
                        "max_relative_difference_edges_above_1e-4"
                    ],
                    "loadavg_1m_before": r["loadavg_1m_before"],
                    "loadavg_1m_after": r["loadavg_1m_after"],
                    "git_commit": r.get("git_commit"),
                }
                for r in compares
            ],
        }
    batched = next((r for r in results if r["kind"] == "edges-batched"), None)
    looped = next((r for r in results if r["kind"] == "edges-looped"), None)
    if batched and looped and "edges" in batched and "edges" in looped:
        a, b = batched.pop("edges"), looped.pop("edges")
        worst = max((abs(a[k] - b[k]) / (abs(b[k]) + 1e-6) for k in a), default=0.0)
        summary["edges_speedup_batched_vs_looped"] = looped["seconds"] / batched["seconds"]
        summary["edges_same_keys"] = a.keys() == b.keys()
        summary["edges_max_relative_difference"] = worst
    for r in results:
        r.pop("edges", None)
    record = {
        "machine": machine_info(),
        "sae": args.sae,
        "acts": args.acts,
        "summary": summary,
        "results": results,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"written {path}")


if __name__ == "__main__":
    main()
