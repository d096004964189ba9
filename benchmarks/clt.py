"""A cross-layer transcoder against per-layer transcoders on the same layers, latents and data.

On a store holding `blocks.L.ln2.hook_normalized` and `blocks.L.hook_mlp_out` of consecutive
layers (harvest them with `saelab harvest --hooks blocks.4.ln2.hook_normalized
blocks.4.hook_mlp_out ... blocks.7.hook_mlp_out`), train

1. one CLT over the layers (`--d-sae` latents and `--k` active per layer), and
2. one TopK transcoder per layer with the same `--d-sae` and `--k` (all in one pass),

each for `--tokens` tokens of the train split, one after the other, and measure on the held-out
split, per layer: the FVU of the MLP output (raw activations), L0, and the dead fraction (latents
that fire on none of the held-out tokens; the trainer's own end-of-run dead fraction, over its
dead window, is reported beside it). For the CLT also the FVU with only its same-layer decoders
(what its cross-layer decoders add). Speed: training tokens per second of each run (wall clock
of the run, loader included).

    python -m benchmarks.clt --acts runs/mlp47.zarr --layers 4-7 --d-sae 2048 --k 32
    python -m benchmarks.clt --acts - --steps-only --out benchmarks/results/clt-step-cpu.json

`--steps-only` times one training step (forward and backward) of the CLT and of the per-layer
transcoders on the same random batch, alternated, best of 9 (and the median ratio of neighbouring runs), with no and with half the latents
dead (what the trainer's wall clock cannot separate from the loader and a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402
from saelab.activations.loader import JointHookLoader  # noqa: E402
from saelab.sae import load_sae, make_config  # noqa: E402
from saelab.sae.config import TrainConfig  # noqa: E402
from saelab.sae.run import TrainRunConfig, parse_layers, run_training  # noqa: E402

IN = "blocks.{layer}.ln2.hook_normalized"
OUT = "blocks.{layer}.hook_mlp_out"


def held_out(acts: str, layers: list[int], max_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split's MLP inputs and outputs `[N, L, d]` (same tokens)."""
    hooks = [IN.format(layer=x) for x in layers] + [OUT.format(layer=x) for x in layers]
    loader = JointHookLoader(acts, hooks, batch_size=1024, split="test", drop_last=False)
    rows, have = [], 0
    for batch in loader:
        rows.append(batch)
        have += len(batch)
        if have >= max_rows:
            break
    data = torch.cat(rows)[:max_rows]
    n = len(layers)
    x, y = data[:, : n * loader.widths[hooks[0]]], data[:, n * loader.widths[hooks[0]] :]
    return x.reshape(len(data), n, -1), y.reshape(len(data), n, -1)


def fvu(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    return float((y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def last_metrics(folder: Path, name: str | None = None) -> dict:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if name is None or r["sae"] == name]
    return rows[-1]


def train(acts, layers, saes, tokens, batch, out, hook=None) -> float:
    """Train and return the wall-clock seconds."""
    cfg = TrainRunConfig(
        acts=acts, saes=saes, layers=layers, hook=hook, tokens=tokens, batch_size=batch, out=out,
        train=TrainConfig(tokens=1, progress=False),
    )  # fmt: skip
    t0 = time.perf_counter()
    run_training(cfg)
    return time.perf_counter() - t0


@torch.no_grad()
def measure_clt(folder: Path, x, y, layers) -> dict:
    clt = load_sae(folder, architecture="clt")
    f = {layer: clt.encode_layer(layer, x[:, p]) for p, layer in enumerate(layers)}
    out: dict = {"per_layer": {}}
    for q, dst in enumerate(layers):
        local = clt.bias(dst) + clt.decode_to(dst, dst, f[dst])
        full = local + sum(clt.decode_to(src, dst, f[src]) for src in layers if src < dst)
        fired = (f[dst] > 0).any(0)
        out["per_layer"][str(dst)] = {
            "fvu": fvu(full, y[:, q]),
            "fvu_same_layer_decoders_only": fvu(local, y[:, q]),
            "l0": float((f[dst] > 0).sum(-1).float().mean()),
            "dead_fraction_held_out": float(1 - fired.float().mean()),
        }
    metrics = last_metrics(folder)
    out["trainer_dead_pct_at_end"] = metrics["dead_pct"]
    out["fvu_mean_over_layers"] = sum(v["fvu"] for v in out["per_layer"].values()) / len(layers)
    return out


@torch.no_grad()
def measure_transcoders(folder: Path, x, y, layers, name: str) -> dict:
    out: dict = {"per_layer": {}}
    dead_end = []
    for q, layer in enumerate(layers):
        member = f"{name}-L{layer}"
        tc = load_sae(folder / member, architecture="transcoder")
        f = tc.encode(x[:, q])
        out["per_layer"][str(layer)] = {
            "fvu": fvu(tc(x[:, q]), y[:, q]),
            "l0": float((f > 0).sum(-1).float().mean()),
            "dead_fraction_held_out": float(1 - (f > 0).any(0).float().mean()),
        }
        dead_end.append(last_metrics(folder, member)["dead_pct"])
    out["trainer_dead_pct_at_end"] = sum(dead_end) / len(dead_end)
    out["fvu_mean_over_layers"] = sum(v["fvu"] for v in out["per_layer"].values()) / len(layers)
    return out


def step_costs(d_sae: int, k: int, n_layers: int, batch: int, repeats: int = 9) -> dict:
    """Seconds per training step (forward and backward, no optimiser) of one CLT and of n_layers
    transcoders on the same random batch, alternated, with no and with half the latents dead."""
    from saelab.sae import build_sae
    from saelab.sae.base import StepContext

    torch.manual_seed(0)
    d = 576
    ins = [IN.format(layer=x) for x in range(n_layers)]
    outs = [OUT.format(layer=x) for x in range(n_layers)]
    shape = {"d_sae": d_sae, "k": k, "d_in": d, "d_out": d}
    clt = build_sae(make_config("clt", **shape, input_hooks=ins, target_hooks=outs))
    tcs = [build_sae(make_config("transcoder", **shape, target_hook=o)) for o in outs]
    x, y = torch.randn(batch, n_layers * d), torch.randn(batch, n_layers * d)

    def run_clt(dead):
        clt.training_forward(x, StepContext(dead_mask=dead, target=y)).loss.backward()

    def run_tcs(dead):
        for p, tc in enumerate(tcs):
            cols = slice(p * d, (p + 1) * d)
            mask = None if dead is None else dead[p * d_sae : (p + 1) * d_sae]
            ctx = StepContext(dead_mask=mask, target=y[:, cols].contiguous())
            tc.training_forward(x[:, cols].contiguous(), ctx).loss.backward()

    out: dict = {}
    for frac in (0.0, 0.5):
        dead = None if frac == 0 else torch.rand(n_layers * d_sae) < frac
        times: dict[str, list[float]] = {"clt": [], "transcoders": []}
        for _ in range(repeats):
            for name, fn in (("clt", run_clt), ("transcoders", run_tcs)):
                t0 = time.perf_counter()
                fn(dead)
                times[name].append(time.perf_counter() - t0)
        ratios = sorted(c / t for c, t in zip(times["clt"], times["transcoders"]))
        out[f"dead_{frac}"] = {
            **{name: min(v) for name, v in times.items()},
            "median_ratio_clt_to_transcoders": ratios[len(ratios) // 2],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acts", required=True)
    ap.add_argument("--layers", default="4-7")
    ap.add_argument("--d-sae", type=int, default=2048, help="latents per layer")
    ap.add_argument("--k", type=int, default=32, help="active latents per layer")
    ap.add_argument("--tokens", type=int, default=146_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--eval-rows", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="runs/bench-clt", help="where the dictionaries are saved")
    ap.add_argument("--out", default="benchmarks/results/clt-cpu.json")
    ap.add_argument(
        "--steps-only", action="store_true",
        help="only time one training step of each on a random batch (no store needed)",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.steps_only:
        costs = step_costs(args.d_sae, args.k, len(parse_layers(args.layers)), args.batch_size)
        result = {"settings": vars(args), "machine": machine_info(), "seconds_per_step": costs}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(costs, indent=2))
        return
    layers = parse_layers(args.layers)
    runs = Path(args.runs)
    if runs.exists() and any(runs.iterdir()):
        raise SystemExit(f"{runs} is not empty; pass another --runs")

    common = {"d_sae": args.d_sae, "k": args.k}
    clt_s = train(args.acts, args.layers, [make_config("clt", **common)], args.tokens,
                  args.batch_size, str(runs / "clt"))  # fmt: skip
    tc_cfg = make_config("transcoder", target_hook=OUT, **common)
    tc_s = train(args.acts, args.layers, [tc_cfg], args.tokens, args.batch_size,
                 str(runs / "per-layer"), hook=IN)  # fmt: skip

    x, y = held_out(args.acts, layers, args.eval_rows)
    clt = measure_clt(runs / "clt", x, y, layers)
    per_layer = measure_transcoders(runs / "per-layer", x, y, layers, tc_cfg.resolved_name())
    clt["train_seconds"], per_layer["train_seconds"] = clt_s, tc_s
    clt["tokens_per_s"], per_layer["tokens_per_s"] = args.tokens / clt_s, args.tokens / tc_s
    result = {
        "settings": {**vars(args), "layers": layers, "held_out_rows": len(x)},
        "machine": machine_info(),
        "threads_env": os.environ.get("OMP_NUM_THREADS"),
        "clt": clt,
        "per_layer_transcoders": per_layer,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("clt", "per_layer_transcoders")}, indent=2))


if __name__ == "__main__":
    main()
