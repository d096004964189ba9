"""How much an SAE learns per token and per second: held-out FVU against tokens seen and
against wall-clock seconds, for saelab and sparsify (both of its optimisers), on synthetic
activations with Zipf-like feature frequencies and on real activations of a harvested store.

    python benchmarks/learning.py --peers-python /tmp/peers-venv/bin/python \\
        --acts runs/acts.zarr --hook blocks.8.hook_resid_post            # full size (hours)
    python benchmarks/learning.py --d-sae 1152 --k 16 --max-tokens 262144 ...   # reduced
    python benchmarks/learning.py --ablate ... --tools saelab          # saelab variants only

Same data for every tool: the rows are made (synthetic) or read (real) once, saved to a
temporary file, and every tool reads batches from it in the same order, one pass, no repeats;
the held-out rows are never trained on. Every measurement runs in its own subprocess; peers
run from a scratch venv (`--peers-python`), never as project dependencies.

How horizons are measured. The horizons are geometric (each twice the last). A tool whose
schedule depends on its budget gets one run per horizon with that budget, so every point is
the end of a run planned for that many tokens: saelab (LR warm-up and decay to 0, sparsity
warm-up and dead window are all laid out over `tokens`), and sparsify's Adam when its
1000-step warm-up ends before the largest horizon. A tool whose schedule does not depend on
the budget is evaluated at checkpoints of one run: sparsify's default (schedule-free SignSGD
has no schedule) and sparsify's Adam while every horizon lies inside its 1000-step linear
warm-up (its LR at step i is then i/1000 whatever the budget, so a checkpoint equals a run
with that budget). Geometric horizons keep a per-horizon tool's total at ≈ 2× the largest.

What is reported per (data set, tool, horizon): held-out FVU (float64, raw units, the tool's
evaluation weights: schedule-free tools are evaluated at their averaged `x` sequence),
wall-clock seconds of training (set-up included, evaluations excluded), and the fraction of
latents that fire on no held-out row. Time to quality: for each horizon, the seconds saelab
needs to reach sparsify's final FVU at that horizon (the first evaluation, over all of its
runs, whose FVU is at or below it; each per-horizon run is also evaluated at the smaller
horizons it passes), as a ratio to sparsify's seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the repository first, and not this folder: a script's own folder must never shadow an
# installed package (tests/test_benchmark_names.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]

from benchmarks.children import (  # noqa: E402
    ensure_kernels,
    fvu,
    peak_rss_mb,
    peer_sys_path,
    run_child,
)

D_IN = 576
SYNTHETIC = {
    "atoms": 16384,
    "active": 24,
    "zipf_exponent": 1.0,
    "noise": 0.05,
    "offset": 1.0,
}
"""The synthetic recipe: each row sums `active` distinct atoms of a unit-norm dictionary of
`atoms` directions, drawn without replacement with weights ∝ 1 / rank^zipf_exponent, times
Exp(1) coefficients; plus a fixed offset (N(0, offset²) per dimension, drawn once) and
N(0, noise²) noise."""
SPARSIFY_WARMUP = 1000
"""sparsify's `lr_warmup_steps` default (its Adam's linear warm-up)."""

ABLATIONS: dict[str, dict] = {
    "defaults": {},
    "before_issue_17": {"lr_scale": 1.0, "train": {"lr_decay_fraction": 0.2}},
    "lr_x4": {"lr_scale": 4.0},
    "lr_x16": {"lr_scale": 16.0},
    "lr_x32": {"lr_scale": 32.0},
    "lr_x16_no_auxk": {"lr_scale": 16.0, "sae": {"aux_coefficient": 0.0}},
    "lr_x16_no_warmup": {"lr_scale": 16.0, "train": {"lr_warmup_steps": 0}},
    "lr_x16_no_decay": {"lr_scale": 16.0, "train": {"lr_decay_fraction": 0.0}},
    "lr_x16_mean_b_dec": {"lr_scale": 16.0, "sae": {"b_dec_init": "mean"}},
    "sf_adam_x16": {
        "lr_scale": 16.0,
        "train": {"optimizer": "schedule_free_adam", "lr_decay_fraction": 0.0},
    },
    "sf_adam_x32": {
        "lr_scale": 32.0,
        "train": {"optimizer": "schedule_free_adam", "lr_decay_fraction": 0.0},
    },
    "lr_x16_warmup_25pct": {"lr_scale": 16.0, "train": {"lr_warmup_fraction": 0.25}},
    "lr_x16_w25_no_auxk": {
        "lr_scale": 16.0,
        "sae": {"aux_coefficient": 0.0},
        "train": {"lr_warmup_fraction": 0.25},
    },
    "lr_x16_w25_window_1m": {
        "lr_scale": 16.0,
        "train": {"lr_warmup_fraction": 0.25, "dead_window_tokens": 1_000_000},
    },
    "lr_x8_w25": {"lr_scale": 8.0, "train": {"lr_warmup_fraction": 0.25}},
    "lr_x16_w50": {"lr_scale": 16.0, "train": {"lr_warmup_fraction": 0.5}},
    "lr_x16_decay_all": {"lr_scale": 16.0, "train": {"lr_decay_fraction": 1.0}},
    "lr_x16_w10_decay_all": {
        "lr_scale": 16.0,
        "train": {"lr_warmup_fraction": 0.1, "lr_decay_fraction": 1.0},
    },
}
"""saelab variants for `--ablate`: name -> {"sae": SAEConfig overrides, "train": TrainConfig
overrides, "lr_scale": the LR as a factor on the OpenAI rule 2e-4 / sqrt(d_sae / 2**14)}; the
others keep saelab's current defaults. Filled by the study in
docs/architecture.md (training defaults)."""


# -- data ---------------------------------------------------------------------------------


def synthetic_rows(n: int, seed: int, start: int = 0, chunk: int = 4096):
    """Rows `start .. start + n` of the synthetic stream (chunk i is drawn from its own seed,
    so any row range is reproducible)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(SYNTHETIC["atoms"], D_IN, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = SYNTHETIC["offset"] * torch.randn(D_IN, generator=g)
    ranks = torch.arange(1, SYNTHETIC["atoms"] + 1, dtype=torch.float64)
    weights = ranks.pow(-SYNTHETIC["zipf_exponent"])
    weights = weights[torch.randperm(SYNTHETIC["atoms"], generator=g)]  # rank unrelated to index
    out = torch.empty(n, D_IN)
    first, last = start // chunk, (start + n - 1) // chunk
    for c in range(first, last + 1):
        gc = torch.Generator().manual_seed(seed * 1_000_003 + c + 1)
        idx = _distinct_draws(weights, chunk, SYNTHETIC["active"], gc)
        coef = torch.empty(chunk, SYNTHETIC["active"]).exponential_(generator=gc)
        rows = torch.einsum("na,nad->nd", coef, atoms[idx]) + offset
        rows += SYNTHETIC["noise"] * torch.randn(chunk, D_IN, generator=gc)
        lo, hi = max(start, c * chunk), min(start + n, (c + 1) * chunk)
        out[lo - start : hi - start] = rows[lo - c * chunk : hi - c * chunk]
    return out


def _distinct_draws(weights, rows: int, count: int, g):
    """Per row, `count` distinct indices drawn without replacement with probabilities ∝
    `weights` (successive sampling): draw with replacement and keep each index's first
    occurrence, which is the same distribution; a row with too few distinct draws is redrawn
    by the Gumbel top-k trick (also sampling without replacement)."""
    import torch

    draws = torch.multinomial(weights, rows * 4 * count, replacement=True, generator=g)
    draws = draws.view(rows, 4 * count)
    same = draws[:, :, None] == draws[:, None, :]
    earlier = torch.ones(4 * count, 4 * count, dtype=torch.bool).tril(-1)
    fresh = ~(same & earlier).any(-1)
    keep = fresh & (fresh.cumsum(1) <= count)
    idx = torch.empty(rows, count, dtype=torch.long)
    full = keep.sum(1) == count
    idx[full] = draws[full][keep[full]].view(-1, count)
    short = (~full).nonzero().squeeze(1)
    if short.numel():
        gumbel = -torch.empty(short.numel(), weights.numel()).exponential_(generator=g).log()
        idx[short] = (weights.log().float() + gumbel).topk(count, dim=1).indices
    return idx


def real_rows(store: str, hook: str, n: int, split: str, seed: int):
    """The first `n` rows of a store's split in the loader's shuffled order (float32); more
    than one epoch of the split when it holds fewer rows."""
    import torch

    from saelab.activations.loader import ActivationLoader

    loader = ActivationLoader(store, hook=hook, batch_size=4096, seed=seed, split=split)
    per_epoch = loader.tokens_per_epoch
    epochs = max(1, math.ceil(n / max(per_epoch, 1)))
    if epochs > 1:
        loader = ActivationLoader(
            store, hook=hook, batch_size=4096, seed=seed, split=split, epochs=epochs
        )
    rows, have = torch.empty(n, loader.d_in), 0  # filled in place: no second copy at 4M rows
    for batch in loader:
        take = min(batch.shape[0], n - have)
        rows[have : have + take] = batch[:take]
        have += take
        if have >= n:
            break
    if have < n:
        raise SystemExit(f"{store} {split!r} split has {have} rows, {n} needed")
    return rows, epochs


def make_data(kind: str, path: Path, n_train: int, n_held: int, args) -> dict:
    """Write {"train": [n_train, d], "held_out": [n_held, d]} to `path`; returns a description."""
    import torch

    if kind == "synthetic":
        train = synthetic_rows(n_train, args.seed)
        held = synthetic_rows(n_held, args.seed, start=n_train)  # the rows after the training ones
        desc = {"recipe": dict(SYNTHETIC), "seed": args.seed, "held_out": "the rows after"}
    else:
        train, epochs = real_rows(args.acts, args.hook, n_train, "train", args.seed)
        held, _ = real_rows(args.acts, args.hook, n_held, "test", args.seed)
        desc = {"store": args.acts, "hook": args.hook, "train_epochs": epochs}
        desc["held_out"] = "the store's test split (its last chunks)"
    torch.save({"train": train, "held_out": held}, path)
    return {**desc, "train_rows": n_train, "held_out_rows": n_held}


def _load(path: str):
    import torch

    data = torch.load(path, mmap=True)  # 4M rows are ~10 GB: paged in as read
    return data["train"], data["held_out"]


# -- children -----------------------------------------------------------------------------


def child_saelab(spec: dict) -> dict:
    """One saelab run per horizon in `spec["runs"]`, each evaluated at every horizon it passes."""
    import torch

    ensure_kernels()
    from saelab.sae.architectures.topk import TopKConfig
    from saelab.sae.config import TrainConfig
    from saelab.sae.trainer import Trainer

    train, held = _load(spec["acts"])
    batch = spec["batch"]
    batches = list(train.split(batch))
    variant = spec.get("variant", {})
    runs = []
    for horizon in [2 * batch, *spec["runs"]]:  # the first, untimed, warms the process up
        sae_kw = dict(variant.get("sae", {}))
        sae_cfg = TopKConfig(d_sae=spec["d_sae"], k=spec["k"], seed=spec["seed"], **sae_kw)
        if "lr_scale" in variant:  # a factor on the OpenAI rule, 2e-4 / sqrt(d_sae / 2**14)
            sae_cfg.lr = 2e-4 / math.sqrt(spec["d_sae"] / 2**14) * variant["lr_scale"]
        cfg = TrainConfig(tokens=horizon, progress=False, **variant.get("train", {}))
        evals = sorted(h for h in spec["evals"] if h <= horizon)
        points, elapsed = [], 0.0
        t0 = time.perf_counter()
        trainer = Trainer(sae_cfg, iter(batches), cfg)
        trainer.setup()
        while trainer.step < trainer.total_steps:
            trainer.train_step(batches[trainer.step])
            if evals and trainer.tokens >= evals[0]:
                elapsed += time.perf_counter() - t0
                evals.pop(0)
                member = trainer.members[0]
                sae = trainer.eval_saes()[member.name]
                points.append(
                    {
                        "tokens": trainer.tokens,
                        "seconds": elapsed,
                        **_eval(sae, held),
                        "train_dead_fraction": member.dead.dead_fraction(),
                    }
                )
                t0 = time.perf_counter()
        runs.append({"horizon": horizon, "points": points})
        del trainer
    return {
        "runs": runs[1:],
        "lr": sae_cfg.resolved_lr(),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def _eval(sae, held) -> dict:
    """Held-out FVU and the fraction of latents that fire on no held-out row."""
    import torch

    with torch.no_grad():
        parts, fired = [], torch.zeros(sae.d_sae, dtype=torch.bool)
        for x in held.split(4096):
            code = sae.encode_sparse(x)
            parts.append(sae.decode_sparse(code))
            fired[code.idx[code.vals != 0]] = True
        x_hat = torch.cat(parts)
    return {"fvu": fvu(held, x_hat), "dead_fraction": float((~fired).float().mean())}


def child_sparsify(spec: dict) -> dict:
    """sparsify's SparseCoder trained the way its Trainer does with `spec["optimizer"]`
    ("signum": its default, schedule-free SignSGD; "adam": Adam with a linear warm-up over
    1000 steps and a linear decay to 0 at the end of the run), on the same batches."""
    peer_sys_path()
    from importlib.metadata import version

    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    train, held = _load(spec["acts"])
    batches = list(train.split(spec["batch"]))
    runs = []
    for horizon in [2 * spec["batch"], *spec["runs"]]:  # the first, untimed, warms up
        steps = math.ceil(horizon / spec["batch"])
        torch.manual_seed(spec["seed"])
        t0 = time.perf_counter()
        sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=spec["d_sae"], k=spec["k"]))
        opt, lr_at = _sparsify_optimizer(sae, spec["optimizer"], spec["d_sae"], steps)
        steps_since = torch.zeros(spec["d_sae"], dtype=torch.long)
        evals = sorted(h for h in spec["evals"] if h <= horizon)
        points, elapsed = [], 0.0
        for i in range(steps):
            x = batches[i]
            if i == 0:
                sae.b_dec.data = x.mean(0)  # sparsify: b_dec from the first batch's mean
            sae.set_decoder_norm_to_unit_norm()
            out = sae(x, dead_mask=None)  # auxk_alpha defaults to 0: no dead mask
            out.fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            for group in opt.param_groups:
                group["lr"] = lr_at(i)
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                steps_since += x.shape[0]
                steps_since[out.latent_indices.flatten()] = 0
            tokens = (i + 1) * spec["batch"]
            if evals and tokens >= evals[0]:
                elapsed += time.perf_counter() - t0
                evals.pop(0)
                points.append(
                    {"tokens": tokens, "seconds": elapsed, **_sparsify_eval(sae, opt, held)}
                )
                points[-1]["train_dead_fraction"] = float((steps_since > 10_000_000).float().mean())
                t0 = time.perf_counter()
        runs.append({"horizon": horizon, "points": points})
    return {
        "runs": runs[1:],
        "version": version("eai-sparsify"),
        "lr": lr_at(10**9) if spec["optimizer"] == "signum" else _sparsify_adam_lr(spec["d_sae"]),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def _sparsify_adam_lr(d_sae: int) -> float:
    return 2e-4 / (d_sae / 2**14) ** 0.5


def _sparsify_optimizer(sae, name: str, d_sae: int, steps: int):
    """(optimizer, lr(step)) as sparsify's Trainer builds them for `name`."""
    import torch

    if name == "signum":
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = 5e-3 / (d_sae / 2**14) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
        opt.train()
        return opt, lambda i: lr
    lr = _sparsify_adam_lr(d_sae)
    opt = torch.optim.Adam([{"params": sae.parameters(), "lr": lr}])

    def lr_at(i: int) -> float:  # transformers' get_linear_schedule_with_warmup
        if i < SPARSIFY_WARMUP:
            return lr * i / SPARSIFY_WARMUP
        return lr * max(0.0, (steps - i) / max(1, steps - SPARSIFY_WARMUP))

    return opt, lr_at


def _sparsify_eval(sae, opt, held) -> dict:
    """Evaluate at the optimiser's evaluation weights (schedule-free: `x`), then put the
    training weights back exactly as they were."""
    import torch

    saved = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    if hasattr(opt, "eval"):
        opt.eval()
    with torch.no_grad():
        parts, fired = [], torch.zeros(sae.num_latents, dtype=torch.bool)
        for x in held.split(4096):
            out = sae(x)
            parts.append(out.sae_out)
            fired[out.latent_indices.flatten()] = True
        x_hat = torch.cat(parts)
    if hasattr(opt, "train"):
        opt.train_mode = False  # the weights come back from the copy, not by extrapolation
        sae.load_state_dict(saved)
        opt.train_mode = True
    return {"fvu": fvu(held, x_hat), "dead_fraction": float((~fired).float().mean())}


CHILDREN = {"saelab": child_saelab, "sparsify": child_sparsify}


# -- parent -------------------------------------------------------------------------------


def horizons(max_tokens: int, count: int, batch: int) -> list[int]:
    """`count` geometric horizons (each twice the last) ending at `max_tokens`, whole batches."""
    out = []
    for i in range(count):
        h = max(batch, round(max_tokens / 2 ** (count - 1 - i) / batch) * batch)
        if h not in out:
            out.append(h)
    return out


def tool_specs(args, hs: list[int]) -> dict[str, tuple[str, str, dict]]:
    """tool name -> (python, child kind, spec extras)."""
    tools = {}
    for name in args.tools.split(","):
        if name == "saelab":
            tools["saelab"] = (sys.executable, "saelab", {"runs": hs, "variant": {}})
        elif name in ("sparsify-signum", "sparsify-adam") and args.peers_python:
            opt = name.split("-")[1]
            inside_warmup = hs[-1] // args.batch <= SPARSIFY_WARMUP
            runs = [hs[-1]] if opt == "signum" or inside_warmup else hs
            tools[name] = (args.peers_python, "sparsify", {"runs": runs, "optimizer": opt})
    return tools


def final_points(result: dict) -> dict[int, dict]:
    """horizon -> the point at the end of the run planned for it (or the checkpoint of the
    single run at that horizon)."""
    out = {}
    for run in result.get("runs", []):
        for p in run["points"]:
            if p["tokens"] == run["horizon"] or len(result["runs"]) == 1:
                out[p["tokens"]] = p
    return out


def time_to_quality(ours: dict, peer: dict) -> list[dict]:
    """Per horizon: seconds saelab needs to reach the peer's FVU there, and the ratio."""
    all_points = sorted(
        (p for run in ours.get("runs", []) for p in run["points"]), key=lambda p: p["seconds"]
    )
    rows = []
    for h, p in sorted(final_points(peer).items()):
        hit = next((q for q in all_points if q["fvu"] <= p["fvu"]), None)
        rows.append(
            {
                "horizon": h,
                "peer_fvu": p["fvu"],
                "peer_seconds": p["seconds"],
                "saelab_seconds": None if hit is None else hit["seconds"],
                "saelab_tokens": None if hit is None else hit["tokens"],
                "ratio": None if hit is None else hit["seconds"] / p["seconds"],
            }
        )
    return rows


def summarise(results: dict) -> dict:
    """Per data set: horizon x tool -> FVU, seconds, dead fraction; time to quality."""
    out = {}
    for data, tools in results.items():
        table = {name: final_points(r) for name, r in tools.items() if "runs" in r}
        peers = [n for n in table if n.startswith("sparsify")]
        best_peer = {}
        for name in peers:
            for h, p in table[name].items():
                if h not in best_peer or p["fvu"] < best_peer[h]["fvu"]:
                    best_peer[h] = {**p, "tool": name}
        ours = table.get("saelab", {})
        out[data] = {
            "table": {
                name: {
                    str(h): {k: p[k] for k in ("fvu", "seconds", "dead_fraction")}
                    for h, p in sorted(pts.items())
                }
                for name, pts in table.items()
            },
            "saelab_minus_best_peer_fvu": {
                str(h): ours[h]["fvu"] - best_peer[h]["fvu"] for h in ours if h in best_peer
            },
            "time_to_quality": {
                name: time_to_quality(tools["saelab"], tools[name])
                for name in peers
                if "runs" in tools.get("saelab", {})
            },
        }
    return out


def print_summary(summary: dict) -> None:
    for data, s in summary.items():
        print(f"\n== {data}: held-out FVU / seconds / dead fraction ==")
        names = list(s["table"])
        hs = sorted({int(h) for t in s["table"].values() for h in t})
        print("tokens".rjust(10) + "".join(n.rjust(28) for n in names))
        for h in hs:
            cells = []
            for n in names:
                p = s["table"][n].get(str(h))
                cells.append(
                    f"{p['fvu']:.4f} {p['seconds']:7.1f}s {p['dead_fraction']:.3f}".rjust(28)
                    if p
                    else "-".rjust(28)
                )
            print(f"{h:>10}" + "".join(cells))
        for peer, rows in s["time_to_quality"].items():
            for r in rows:
                ratio = "never" if r["ratio"] is None else f"{r['ratio']:.2f}x"
                print(f"  time to {peer}'s FVU at {r['horizon']}: {ratio}")


def plot(results: dict, path: Path) -> None:
    """FVU vs tokens and vs seconds, one row per data set (plotly HTML)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(results)
    fig = make_subplots(
        rows=len(names),
        cols=2,
        subplot_titles=[f"{d}: {x}" for d in names for x in ("vs tokens", "vs seconds")],
    )
    colours = {}
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for row, data in enumerate(names, start=1):
        for tool, r in results[data].items():
            pts = sorted(final_points(r).items())
            if not pts:
                continue
            colour = colours.setdefault(tool, palette[len(colours) % len(palette)])
            for col, key in ((1, "tokens"), (2, "seconds")):
                fig.add_trace(
                    go.Scatter(
                        x=[p[key] for _, p in pts],
                        y=[p["fvu"] for _, p in pts],
                        mode="lines+markers",
                        name=tool,
                        legendgroup=tool,
                        showlegend=row == 1 and col == 1,
                        line={"color": colour},
                    ),
                    row=row,
                    col=col,
                )
            fig.update_xaxes(type="log", title_text="tokens", row=row, col=1)
            fig.update_xaxes(type="log", title_text="seconds", row=row, col=2)
            fig.update_yaxes(title_text="held-out FVU", row=row, col=1)
    fig.update_layout(
        title="Held-out FVU against tokens and wall-clock seconds", height=420 * len(names)
    )
    fig.write_html(str(path), include_plotlyjs="cdn")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    p.add_argument("--data", default="synthetic,real", help="comma list: synthetic, real")
    p.add_argument("--tools", default="saelab,sparsify-signum,sparsify-adam")
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--max-tokens", type=int, default=4 * 2**20, help="the largest horizon")
    p.add_argument("--horizons", type=int, default=5, help="how many (geometric, factor 2)")
    p.add_argument("--held-out", type=int, default=16384, help="held-out rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--acts", help="store of real activations (read only)")
    p.add_argument("--hook", default="blocks.8.hook_resid_post")
    p.add_argument("--peers-python", help="python of a scratch venv with eai-sparsify")
    p.add_argument("--ablate", help="comma list of ABLATIONS names (saelab variants) to run")
    p.add_argument(
        "--reuse",
        help="comma list of result JSONs of earlier runs with the same sizes and data: their "
        "tools' results join this run's (recorded as reused, with each run's date); with "
        "--tools '' this only merges",
    )
    p.add_argument("--out", help="result JSON (default benchmarks/results/learning-<tag>.json)")
    p.add_argument(
        "--tmp", help="folder for the data files, kept there for later runs (default: a temp dir)"
    )
    args = p.parse_args()
    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return
    import tempfile

    import torch

    from benchmarks.machine import machine_info

    hs = horizons(args.max_tokens, args.horizons, args.batch)
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="saelab-learning-"))
    tmp.mkdir(parents=True, exist_ok=True)
    base = {"d_sae": args.d_sae, "k": args.k, "batch": args.batch, "seed": args.seed, "evals": hs}
    results: dict = {}
    data_desc: dict = {}
    for data in args.data.split(","):
        if data == "real" and not args.acts:
            print("skipping real data: no --acts store given")
            continue
        source = "" if data == "synthetic" else f"-{Path(args.acts).name}-{args.hook}"
        path = tmp / f"{data}{source}-{hs[-1]}-{args.held_out}-seed{args.seed}.pt"
        if args.tmp and path.with_suffix(".json").is_file():  # kept from an earlier run
            data_desc[data] = json.loads(path.with_suffix(".json").read_text())
        else:
            data_desc[data] = make_data(data, path, hs[-1], args.held_out, args)
            if args.tmp:
                path.with_suffix(".json").write_text(json.dumps(data_desc[data]))
        results[data] = {}
        spec0 = {**base, "acts": str(path)}
        if args.ablate:
            for name in args.ablate.split(","):
                spec = {**spec0, "runs": hs, "variant": ABLATIONS[name]}
                results[data][name] = r = run_child(__file__, sys.executable, "saelab", spec)
                _show(data, name, r)
        else:
            for name, (python, kind, extra) in tool_specs(args, hs).items():
                results[data][name] = r = run_child(__file__, python, kind, {**spec0, **extra})
                _show(data, name, r)
        if not args.tmp:
            path.unlink(missing_ok=True)

    reused: dict = {}
    for earlier in filter(None, (args.reuse or "").split(",")):
        for data, tools in _reuse(earlier, base, hs, results).items():
            reused.setdefault(data, {}).update(
                {t: {"file": earlier, "date and command": d} for t, d in tools.items()}
            )
    summary = summarise(results) if not args.ablate else {}
    if summary:
        print_summary(summary)
    tag = f"{args.d_sae}-k{args.k}-{hs[-1]}" + ("-ablation" if args.ablate else "")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"learning-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "learning",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "command": " ".join(["python", "benchmarks/learning.py", *sys.argv[1:]]),
        "full_size_command": FULL_SIZE_COMMAND,
        "config": {
            **base,
            "horizons": hs,
            "data": data_desc,
            "ablations": {n: ABLATIONS[n] for n in (args.ablate or "").split(",") if n},
        },
        "results": results,
        "reused": reused,
        "summary": summary,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    if not args.ablate:
        plot(results, out.with_suffix(".html"))
    print(f"saved {out}")


def _reuse(path: str, base: dict, hs: list[int], results: dict) -> dict:
    """Add the tools of an earlier result file (same sizes, seed and horizons) that this run
    did not measure; returns {data: {tool: date of that run}}."""
    earlier = json.loads(Path(path).read_text())
    cfg = earlier["config"]
    for key in ("d_sae", "k", "batch", "seed"):
        if cfg[key] != base[key]:
            raise SystemExit(f"{path} has {key}={cfg[key]}, this run {base[key]}")
    if cfg["horizons"] != hs:
        raise SystemExit(f"{path} has horizons {cfg['horizons']}, this run {hs}")
    reused: dict = {}
    for data, tools in earlier["results"].items():
        if data not in results:
            continue
        for tool, r in tools.items():
            if tool not in results[data]:
                results[data][tool] = r
                reused.setdefault(data, {})[tool] = earlier["date"] + " " + earlier["command"]
    return reused


FULL_SIZE_COMMAND = (
    "python benchmarks/learning.py --peers-python /tmp/peers-venv/bin/python "
    "--acts STORE --hook blocks.8.hook_resid_post --d-sae 4608 --k 32 --max-tokens 4194304 "
    "&& python benchmarks/learning.py --peers-python /tmp/peers-venv/bin/python "
    "--acts STORE --hook blocks.8.hook_resid_post --d-sae 18432 --k 64 --max-tokens 1048576"
)


def _show(data: str, name: str, r: dict) -> None:
    if "error" in r:
        print(f"{data} {name}: ERROR {r['error']}")
        return
    last = final_points(r)
    line = ", ".join(f"{h}: {p['fvu']:.4f} ({p['seconds']:.0f}s)" for h, p in sorted(last.items()))
    print(f"{data} {name}: {line}", flush=True)


if __name__ == "__main__":
    main()
