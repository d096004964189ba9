"""Attribution graphs: build time and peak memory against prompt length and number of transcoder
layers, and the replacement score of per-layer transcoders against residual-stream SAEs.

    python -m benchmarks.graphs --transcoders DIR [--resid-saes DIR] [--lengths 8 32 128]
        [--n-layers 4 12 30] [--compare-layers 1,5,9,13,17,21,25,29] [--prompts 8]
        [--device cpu] [--out FILE]

Cost: every (prompt length, number of layers) case runs in a fresh process (`--case`), so
`peak_rss_mb` (getrusage's ru_maxrss) is that case's own, loading included;
`rss_model_mb` is the RSS once the model and transcoders are loaded, `graph_peak_rss_mb` the
peak RSS from there on (the kernel's VmHWM, reset through /proc/self/clear_refs) and
`rss_rise_mb` that peak minus `rss_model_mb` (what the graph itself costs); on CUDA `cuda_peak_mb` is torch's own peak counter. The wall time is split into the
real forward + replacement build, the adjacency, influence/pruning/scores, and building and
writing the store rows (a throwaway DuckDB file). A case's n layers are spread evenly over the
model (`layers_for`); its prompt is the first n tokens (BOS + n - 1) of the builtin corpus.

Comparison (`--resid-saes`): per-layer transcoders and residual SAEs (blocks.L.hook_resid_post)
at the same layers, on the same prompts (`--prompts` held-out builtin snippets of 32 tokens).
The transcoder graph is exact in its replacement model; the residual graph's edges are
first-order (MLPs linearised at the clean point: circuits/residual_graph.py). Both are scored
with graph_prune's (circuit-tracer's) replacement and completeness scores, unpruned and pruned
to the same budgets, and the transcoder graph also with every layer's transcoder.
`--train-residual STORE` first trains the residual SAEs with the recipe the graph helper's
transcoders had (benchmarks/graph_agreement.py: Adam 8e-4, 400 steps of 512 tokens, same d_sae
and k, the first 10% of tokens held out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STORE_TOKENS = "/tmp/i27bench/resid.zarr"


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def layers_for(n: int, available: list[int]) -> list[int]:
    """`n` layers spread evenly over `available` (always the first and the last)."""
    if n >= len(available):
        return list(available)
    if n == 1:
        return [available[-1]]
    return [available[round(i * (len(available) - 1) / (n - 1))] for i in range(n)]


def corpus_tokens(store: str, n: int, start_seq: int = 0) -> list[int]:
    """BOS + the next n - 1 tokens of the store's sequences (BOS of later sequences dropped)."""
    import zarr

    seqs = zarr.open(store, mode="r")["tokens"]
    out = [int(seqs[start_seq, 0])]
    i = start_seq
    while len(out) < n:
        out += [int(t) for t in seqs[i, 1:]]
        i += 1
    return out[:n]


def transcoder_folders(root: str) -> dict[int, str]:
    """Layer → folder of the per-layer transcoders under `root` (layerNN/)."""
    from saelab.sae.checkpoint import read_cfg

    out = {}
    for folder in sorted(Path(root).iterdir()):
        if (folder / "cfg.json").exists():
            hook = read_cfg(folder).get("hook_name", "")
            out[int(hook.split(".")[1])] = str(folder)
    return out


# -- one timing case, in its own process -------------------------------------------------


def run_case(transcoders: str, n_tokens: int, n_layers: int, device: str, max_latents: int,
             tokens_store: str) -> dict:  # fmt: skip
    from saelab import resultstore as results
    from saelab.activations.corpus import bos_token_id
    from saelab.activations.models import load_model
    from saelab.circuits.graph_attribution import attribute
    from saelab.circuits.graph_run import (
        GraphConfig,
        load_transcoders,
        prune_and_score,
        rows,
        target_tokens,
    )  # fmt: skip
    from saelab.circuits.replacement import build_replacement

    model = load_model("smollm2-135m", device=device)
    folders = transcoder_folders(transcoders)
    layers = layers_for(n_layers, sorted(folders))
    loaded = load_transcoders(model, [folders[x] for x in layers], device)
    bos = bos_token_id(model.tokenizer)
    tokens = corpus_tokens(tokens_store, n_tokens)
    prompt = model.tokenizer.decode(tokens[1:])
    cfg = GraphConfig(transcoders=[folders[x] for x in layers], prompt=prompt,
                      max_latents=max_latents, device=device, progress=False)  # fmt: skip
    rss_model = _rss_mb()
    load_peak = _peak_mb()
    reset = _reset_peak()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def sync() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    t0 = sync()
    rm = build_replacement(model, tokens, {k: v[0] for k, v in loaded.items()}, bos)
    targets = target_tokens(cfg, model.tokenizer, rm.frozen.logits[-1])
    probs = torch.softmax(rm.frozen.logits[-1].double(), -1)[targets].float()
    t1 = sync()
    graph = attribute(rm, torch.tensor(targets), probs, True, max_latents, 128, False)
    t2 = sync()
    pruned, scores = prune_and_score(graph, cfg)
    t3 = sync()
    with tempfile.TemporaryDirectory() as tmp:
        store = results.ResultsStore(str(Path(tmp) / "g.duckdb"), mode="write")
        run, nodes, edges, saes = rows(cfg, model, rm, graph, pruned, scores, loaded, tokens, 0.0)
        results.write_graph(store, run, nodes, edges, saes)
        store.close() if hasattr(store, "close") else None
    t4 = sync()
    return {
        "prompt_tokens": len(tokens),
        "n_layers": len(layers),
        "layers": layers,
        "active_latents": graph.n_active,
        "graph_latents": graph.n_latents,
        "graph_nodes": graph.size,
        "seconds": {
            "forward_and_replacement": t1 - t0,
            "adjacency": t2 - t1,
            "influence_prune_scores": t3 - t2,
            "store": t4 - t3,
            "total": t4 - t0,
        },
        "peak_rss_mb": _peak_mb(),
        "peak_rss_loading_mb": load_peak,
        "graph_peak_rss_mb": _hwm_mb() if reset else None,
        "rss_model_mb": rss_model,
        "rss_rise_mb": (_hwm_mb() if reset else _peak_mb()) - rss_model,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "replacement": scores.replacement,
        "completeness": scores.completeness,
        "replacement_pruned": scores.replacement_pruned,
        "completeness_pruned": scores.completeness_pruned,
    }


def cases(args) -> list[dict]:
    """Every (length, layers) case in a fresh process."""
    out = []
    for n_layers in args.n_layers:
        for length in args.lengths:
            cmd = [sys.executable, "-m", "benchmarks.graphs", "--case", str(length), str(n_layers),
                   "--transcoders", args.transcoders, "--device", args.device,
                   "--max-latents", str(args.max_latents), "--tokens-store", args.tokens_store]  # fmt: skip
            start = time.perf_counter()
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=args.case_timeout
                )
            except subprocess.TimeoutExpired:
                row = {"prompt_tokens": length, "n_layers": n_layers,
                       "error": f"over the {args.case_timeout} s case timeout"}  # fmt: skip
                print(json.dumps(row), flush=True)
                out.append(row)
                continue
            if proc.returncode != 0:
                row = {"prompt_tokens": length, "n_layers": n_layers,
                       "error": proc.stderr.strip().splitlines()[-1:]}  # fmt: skip
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["process_seconds"] = time.perf_counter() - start
            row["load_avg_1min_after"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


# -- the residual SAEs and the comparison ------------------------------------------------


def train_residual_saes(store_url: str, folder: Path, layers: list[int], d_sae: int, k: int,
                        steps: int) -> dict:  # fmt: skip
    """One TopK SAE per layer on blocks.L.hook_resid_post, graph_agreement's transcoder recipe."""
    import numpy as np

    from saelab.activations.store import ActivationStore
    from saelab.sae.base import StepContext
    from saelab.sae.checkpoint import save_sae
    from saelab.sae.registry import build_sae, make_config

    store = ActivationStore(store_url)
    chunks = store.committed_chunks()
    report = {}
    for layer in layers:
        hook = f"blocks.{layer}.hook_resid_post"
        xs = []
        for c in chunks:
            mask = torch.from_numpy(np.asarray(store.token_mask(c)))
            xs.append(store.read_acts(hook, c).float()[mask])
        x = torch.cat(xs)
        n_eval = len(x) // 10
        x_tr, x_ev = x[n_eval:], x[:n_eval]
        sx = float(x_tr.pow(2).sum(1).mean().rsqrt() * math.sqrt(x.shape[1]))
        sae = build_sae(make_config("topk", d_sae=d_sae, d_in=x.shape[1], k=k, seed=layer))
        g = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            sae.b_dec.copy_((x_tr * sx).mean(0))
            probe = torch.randperm(len(x_tr), generator=g)[:2048]
            sae.init_encoder_scale_(x_tr[probe] * sx)
        opt = torch.optim.Adam(sae.parameters(), lr=8e-4)
        last_fired = torch.zeros(d_sae, dtype=torch.long)
        for step in range(steps):
            rows = torch.randint(len(x_tr), (512,), generator=g)
            dead = (step - last_fired) > 60
            out = sae.training_forward(
                x_tr[rows] * sx, StepContext(dead_mask=dead if step > 60 else None)
            )
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))
                last_fired[out.code.fire_counts() > 0] = step
        sae.eval()
        with torch.no_grad():
            pred = sae(x_ev * sx) / sx
            fvu = float((x_ev - pred).pow(2).sum() / (x_ev - x_ev.mean(0)).pow(2).sum())
            dead_frac = float((sae.encode_sparse(x_ev * sx).fire_counts() == 0).float().mean())
        save_sae(sae, folder / f"layer{layer:02d}", scale=sx, meta={"hook_name": hook})
        report[layer] = {"fvu": fvu, "dead": dead_frac, "tokens": len(x_tr)}
        print(f"residual SAE layer {layer}: FVU {fvu:.3f}, dead {dead_frac:.2%}", flush=True)
    return report


def _scores(a: torch.Tensor, weights, error, embedding, n_latents, n_errors, latent_errors,
            node_budget: int, edge_budget: int) -> dict:  # fmt: skip
    from saelab.circuits.graph_prune import fold_latents, graph_scores, prune

    a = a.double()
    weights = weights.double()
    pruned = prune(a, weights, n_latents, n_errors, node_budget, edge_budget)
    full = graph_scores(a, weights, error, embedding)
    folded = fold_latents(a, pruned.node_mask[:n_latents], latent_errors, n_latents)
    sub = graph_scores(folded, weights, error, embedding)
    return {"replacement": full[0], "completeness": full[1],
            "replacement_pruned": sub[0], "completeness_pruned": sub[1]}  # fmt: skip


def compare(args) -> dict:
    from saelab.activations.corpus import bos_token_id
    from saelab.activations.models import load_model
    from saelab.circuits.graph_attribution import attribute
    from saelab.circuits.graph_run import latent_errors, load_transcoders
    from saelab.circuits.replacement import build_replacement
    from saelab.circuits.residual_graph import (
        attribute_residual,
        build_residual_graph_model,
        load_residual_saes,
    )  # fmt: skip

    model = load_model("smollm2-135m", device=args.device)
    bos = bos_token_id(model.tokenizer)
    layers = [int(x) for x in args.compare_layers.split(",")]
    folders = transcoder_folders(args.transcoders)
    tcs_all = {
        k: v[0] for k, v in load_transcoders(model, list(folders.values()), args.device).items()
    }
    tcs = {x: tcs_all[x] for x in layers}
    rfolders = transcoder_folders(args.resid_saes)
    saes = load_residual_saes([rfolders[x] for x in layers], args.device)
    # held-out prompts: the graph helper's and this file's trainers hold out the first 10%
    n_seqs = 256
    held = max(1, n_seqs // 10)
    per = []
    for i in range(args.prompts):
        tokens = corpus_tokens(
            args.tokens_store, args.compare_tokens, start_seq=i * held // args.prompts
        )
        row = {"prompt": model.tokenizer.decode(tokens[1:]), "tokens": len(tokens)}
        variants = [("transcoders", tcs)]
        if args.all_layers:
            variants.append(("transcoders_all_layers", tcs_all))
        for name, chosen in variants:
            t0 = time.perf_counter()
            rm = build_replacement(model, tokens, chosen, bos)
            last = rm.frozen.logits[-1]
            target = torch.topk(last, 1).indices
            probs = torch.softmax(last.double(), -1)[target].float()
            g = attribute(rm, target, probs, True, args.compare_max_latents, 128, False)
            kinds = g.kinds()
            error = torch.tensor([k == "error" for k in kinds])
            emb = torch.tensor([k == "embedding" for k in kinds])
            row[name] = _scores(g.adjacency, g.logit_weights(), error, emb, g.n_latents,
                                g.n_errors, latent_errors(g), args.node_budget, args.edge_budget)  # fmt: skip
            row[name].update(active_latents=g.n_active, graph_latents=g.n_latents,
                             seconds=time.perf_counter() - t0)  # fmt: skip
        t0 = time.perf_counter()
        rgm = build_residual_graph_model(model, tokens, saes, bos)
        last = rgm.frozen.logits[-1]
        target = torch.topk(last, 1).indices
        probs = torch.softmax(last.double(), -1)[target].float()
        rg = attribute_residual(rgm, target, probs, True)
        error, emb = rg.masks()
        row["residual_saes"] = _scores(rg.adjacency, rg.logit_weights(), error, emb, rg.n_latents,
                                       rg.n_errors, rg.latent_errors(), args.node_budget,
                                       args.edge_budget)  # fmt: skip
        row["residual_saes"].update(active_latents=rg.n_latents, graph_latents=rg.n_latents,
                                    seconds=time.perf_counter() - t0)  # fmt: skip
        print(json.dumps({k: v for k, v in row.items() if k != "prompt"}), flush=True)
        per.append(row)
    summary = {}
    for name in ("transcoders", "transcoders_all_layers", "residual_saes"):
        if name not in per[0]:
            continue
        summary[name] = {}
        for key in ("replacement", "completeness", "replacement_pruned", "completeness_pruned"):
            vals = [r[name][key] for r in per]
            summary[name][key] = {"mean": statistics.mean(vals),
                                  "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                  "min": min(vals), "max": max(vals)}  # fmt: skip
    return {"layers": layers, "per_prompt": per, "summary": summary}


def sgemm_gflops(n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b, out=out)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def markdown(results: list[dict]) -> str:
    """The headline tables of result files: cost per case, then the score comparison."""
    lines = []
    for res in results:
        if res.get("cases"):
            lines += [
                "| tokens | layers | active latents | graph latents | forward+replacement s | "
                "adjacency s | prune+scores s | store s | total s | graph peak RSS MB (rise) |",
                "| " + " | ".join(["---"] * 10) + " |",
            ]
            for c in res["cases"]:
                if "error" in c:
                    lines.append(f"| {c['prompt_tokens']} | {c['n_layers']} | {c['error']} |")
                    continue
                t = c["seconds"]
                lines.append(
                    f"| {c['prompt_tokens']} | {c['n_layers']} | {c['active_latents']} | "
                    f"{c['graph_latents']} | {t['forward_and_replacement']:.1f} | "
                    f"{t['adjacency']:.1f} | {t['influence_prune_scores']:.1f} | {t['store']:.1f} | "
                    f"{t['total']:.1f} | {c['graph_peak_rss_mb']:.0f} ({c['rss_rise_mb']:.0f}) |"
                )
        if res.get("comparison"):
            comp = res["comparison"]
            n = len(comp["per_prompt"])
            lines += [
                "",
                f"| dictionaries (layers {','.join(map(str, comp['layers']))}; {n} prompts) | "
                "replacement | completeness | replacement, pruned | completeness, pruned |",
                "| --- | --- | --- | --- | --- |",
            ]
            for name, summ in comp["summary"].items():
                cells = [
                    f"{summ[k]['mean']:.3f} ± {summ[k]['std']:.3f}"
                    for k in ("replacement", "completeness", "replacement_pruned",
                              "completeness_pruned")
                ]  # fmt: skip
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transcoders", help="folder of per-layer transcoders")
    p.add_argument("--resid-saes", help="folder of residual SAEs (layerNN/) for the comparison")
    p.add_argument("--train-residual", help="activation store to train the residual SAEs from")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--n-layers", type=int, nargs="+", default=[4, 12, 30])
    p.add_argument("--max-latents", type=int, default=2048, help="as saelab graph (0: all)")
    p.add_argument("--case-timeout", type=int, default=1800)
    p.add_argument("--compare-layers", default="1,5,9,13,17,21,25,29")
    p.add_argument("--compare-tokens", type=int, default=32)
    p.add_argument("--compare-max-latents", type=int, default=0, help="0: every active latent")
    p.add_argument("--all-layers", action="store_true", help="also score all-layer transcoders")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--node-budget", type=int, default=200)
    p.add_argument("--edge-budget", type=int, default=2000)
    p.add_argument("--skip-cases", action="store_true", help="only the comparison")
    p.add_argument("--tokens-store", default=STORE_TOKENS, help="store whose tokens are prompts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", nargs="+", help="print the markdown tables of result files")
    p.add_argument(
        "--case", type=int, nargs=2, metavar=("TOKENS", "LAYERS"), help=argparse.SUPPRESS
    )
    p.add_argument("--out", help="JSON path (default benchmarks/results/graphs-<device>.json)")
    args = p.parse_args()
    if args.table:
        print(markdown([json.loads(Path(f).read_text()) for f in args.table]))
        return
    if not args.transcoders:
        p.error("--transcoders is required")
    torch.set_grad_enabled(False)
    if args.case:
        row = run_case(args.transcoders, args.case[0], args.case[1], args.device,
                       args.max_latents, args.tokens_store)  # fmt: skip
        print(json.dumps(row))
        return
    from benchmarks.machine import machine_info

    out = {"machine": machine_info(), "config": vars(args), "load_avg_start": os.getloadavg()}
    out["machine"]["sgemm_gflops_1024"] = sgemm_gflops()
    if args.train_residual:
        torch.set_grad_enabled(True)
        out["residual_saes_training"] = train_residual_saes(
            args.train_residual, Path(args.resid_saes),
            [int(x) for x in args.compare_layers.split(",")], args.d_sae, args.k, args.steps,
        )  # fmt: skip
        torch.set_grad_enabled(False)
    if not args.skip_cases:
        out["cases"] = cases(args)
    if args.resid_saes:
        out["comparison"] = compare(args)
        out["comparison"]["edges"] = (
            "transcoder graph: exact in its replacement model (frozen attention and norms); "
            "residual-SAE graph: first order (MLPs linearised at the clean point)"
        )
    out["load_avg_end"] = os.getloadavg()
    out["machine"]["sgemm_gflops_1024_end"] = sgemm_gflops()
    device = "cpu" if args.device == "cpu" else "cuda"
    path = Path(args.out or f"benchmarks/results/graphs-{device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
