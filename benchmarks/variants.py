"""The SAE-variant benchmark: ReLU-L1, TopK, BatchTopK, JumpReLU, Gated and Matryoshka at one
width and matched sparsities, in one sweep over one store, scored the SAEBench way.

For each L0 in `--l0s` the TopK family gets k = L0 and the threshold architectures
(ReLU, JumpReLU, Gated) run in target-L0 mode (`target_l0`, starting sparse at that L0), so
the variants are compared at matched sparsity without hand-tuned coefficients; the L0 each
one reached is reported beside its target. Evaluations: core (FVU, L0 on held-out tokens),
loss (CE loss score, Δloss with the SAE spliced in), features (dashboards, for auto-interp),
absorption (first letter), probing (Wikipedia vs news), and auto-interp with the baseline
explainer and the embedding scorer on a seeded sample of latents (no LLM needed).

Notebook 04 calls `run()` at tiny size; the full run is

    python benchmarks/variants.py --tokens 2300000 --train-tokens 2000000 --d-sae 4608 \
        --archs all --seed-archs relu,topk

(harvest 2.3M tokens of the builtin corpus, 4.7M tokens in all; train each SAE on 2M of the
store's train split; JSON and HTML to benchmarks/results/variants-<device>.json). An
interrupted run resumes: the store, the sweep and the results file are reused.

On 2 cores the full sweep takes most of a day, so it also runs in pieces, one L0 each, over
the same store (harvest and data order are deterministic, so the pieces may run on different
days and machines), each writing its own result file; `--merge` then joins the pieces'
rows and recomputes the comparisons over all of them:

    python benchmarks/variants.py --out W --tokens 2300000 --train-tokens 2000000 \
        --archs all --l0s 32 --seed-archs relu,topk --label l32
    python benchmarks/variants.py --out W2 ... --l0s 16 --seed-archs '' --label l16   # etc.
    python benchmarks/variants.py --merge benchmarks/results/variants-cpu-l*.json

`--extra-evals stability scr tpp ravel unlearning` runs further registered evals on every SAE
(a name not registered is left out, with a note in the summary); the table then shows each of
their metrics with its 95% interval where the eval stores one ("value ± half-width", or
"value [low, high]" when lopsided). `stability` compares the `--seed-archs` twins.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the repository first, and not this folder: a script's own folder must never shadow an
# installed package (tests/test_benchmark_names.py)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() != ROOT / "benchmarks"]

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
"""The first-wave architectures; `--archs all` takes every registered one that trains from a
store (the second wave included)."""
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "jumprelu_preact": (
        "jumprelu",
        {"pre_act_coefficient": 0.4608, "target_l0_method": "controller"},
    ),
    "jumprelu_revival": ("jumprelu", {"target_l0_method": "controller"}),
    "jumprelu_auxk": ("jumprelu", {"pre_act_coefficient": 0.0, "aux_coefficient": 0.5}),
}
"""Named settings of an architecture that `--archs` accepts beside the architectures: the
name's rows sit beside the default's. JumpReLU's defaults (4x the common LR, ε 0.05, the
pre-activation loss at 0.05, the quadratic target-L0 penalty) with the trainer's L0
controller instead of the penalty: `jumprelu_revival` (what the pieces of 2026-12-06/07
ran as the revival setting), `jumprelu_preact` with the pre-activation loss at 0.4608
(those pieces' 1e-4 summed over 4608 latents; it overshoots the target twofold); and
`jumprelu_auxk`, AuxK as the revival in place of the pre-activation loss."""
EVALS = ["core", "loss", "features", "absorption", "probing"]
SEED_ARCHS = ("relu", "topk")
"""Architectures trained a second time (seed + 1) at the middle L0 for the seed-stability
comparison (Paulo & Belrose 2025: ReLU more stable than TopK, 30-70% of latents shared)."""


@dataclass
class VariantsConfig:
    """One benchmark run: the store, the sweep and the evaluations."""

    out: str
    """Working folder: the store, the sweep's checkpoints and the results file go here."""
    tokens: int = 2_000_000
    """Tokens harvested into the store (its train split is what the sweep trains on; the
    builtin corpus holds 4.7M)."""
    dataset: str = "builtin"
    """Corpus spec of the harvest (`builtin`, a local text/JSON/parquet file or folder, or a
    `datasets` name where the network allows)."""
    train_tokens: int | None = None
    """Training tokens per SAE; None: one pass over the store's train split."""
    hook: str = "blocks.8.hook_resid_post"
    """The model's hook (the embedded model's layer-8 residual stream by default)."""
    d_sae: int = 4608
    """Width of every SAE."""
    l0s: tuple[int, ...] = (16, 32, 64)
    """The sparsities: k for the TopK family, target_l0 for the threshold architectures."""
    archs: tuple[str, ...] = ARCHS
    """Architectures in the sweep."""
    seed_archs: tuple[str, ...] = ()
    """Architectures also trained with seed + 1 at the middle L0 (seed stability)."""
    seq_len: int = 128
    """Harvest sequence length."""
    batch_size: int = 4096
    """Training batch (tokens)."""
    evals: list[str] = field(default_factory=lambda: list(EVALS))
    """Evaluations run on every SAE."""
    max_eval_tokens: int | None = None
    """Cap on the tokens of the core metrics (None: the store's whole test split)."""
    loss_sequences: int = 32
    """Sequences for the CE-loss evaluation."""
    features_probing_split: str = "all"
    """Store split the feature dashboards and the probing eval read ("test": the held-out
    tenth of the store, several times faster and noisier)."""
    interp_sample: int = 20
    """Latents per SAE explained (baseline) and scored (embedding); 0 skips auto-interp."""
    seed: int = 0
    """Seed of the data order, the initialisation and the auto-interp sample."""
    extra_evals: tuple[str, ...] = ()
    """Further evals run on every SAE (any registered name: stability, scr, tpp, ravel,
    unlearning, ...); their metrics go into the rows with their 95% intervals."""
    progress: bool = True
    """Progress bars (tqdm.auto)."""


def sweep_configs(cfg: VariantsConfig) -> list:
    """One SAE per (architecture, L0), plus the seed-stability copies."""
    from saelab.sae.registry import make_config

    def config(name: str, l0: int, seed: int, suffix: str = ""):
        arch, settings = SETTINGS.get(name, (name, {}))
        common: dict[str, Any] = dict(
            d_sae=cfg.d_sae, seed=seed, name=f"{name}-L0_{l0}{suffix}", **settings
        )
        if is_threshold_arch(arch):
            return make_config(arch, target_l0=float(l0), init_l0=float(l0), **common)
        return make_config(arch, k=l0, **common)

    configs = [config(arch, l0, cfg.seed) for l0 in cfg.l0s for arch in cfg.archs]
    middle = sorted(cfg.l0s)[len(cfg.l0s) // 2]
    configs += [config(a, middle, cfg.seed + 1, "-seed1") for a in cfg.seed_archs]
    return configs


def is_threshold_arch(arch: str) -> bool:
    """Whether an architecture's sparsity is a coefficient (trained in target-L0 mode) rather
    than a count k."""
    import dataclasses

    from saelab.sae.registry import get_architecture

    fields = {f.name for f in dataclasses.fields(get_architecture(arch).config_class)}
    return "target_l0" in fields


def store_archs() -> tuple[str, ...]:
    """Every registered SAE architecture that trains from an activation store: not the ones
    that need the live model's gradients (g-SAE), nor the transcoders, which reconstruct
    another hook (their config has a `target_hook`) and are not variants of one SAE."""
    import dataclasses

    from saelab.sae.registry import architectures

    def reconstructs_its_input(cls) -> bool:
        return "target_hook" not in {f.name for f in dataclasses.fields(cls.config_class)}

    return tuple(
        name
        for name, cls in architectures().items()
        if not getattr(cls, "needs_lm_grad", False) and reconstructs_its_input(cls)
    )


def parse_name(name: str) -> tuple[str, int, str]:
    """(architecture, target L0, suffix) of a sweep member's name."""
    arch, rest = name.rsplit("-L0_", 1)
    target, _, suffix = rest.partition("-")
    return arch, int(target), suffix


def extra_evals(cfg: VariantsConfig) -> tuple[list[str], dict[str, str]]:
    """The registered ones of `cfg.extra_evals` not already in `cfg.evals`, and a note for
    each name left out."""
    from saelab.base.errors import UserError
    from saelab.evaluation.registry import eval_names

    known = eval_names()
    run, notes = [], {}
    for name in cfg.extra_evals:
        if name not in known:
            notes[name] = f"not a registered eval here (registered: {', '.join(known)})"
        elif name not in cfg.evals and name not in run:
            run.append(name)
    if "stability" in run and not cfg.seed_archs:
        raise UserError(
            "the stability eval compares seed twins: give --seed-archs (e.g. relu,topk) so "
            "the sweep trains some, or drop stability from --extra-evals"
        )
    return run, notes


def extra_metrics(db: str, evals: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{SAE name: {metric: {"value", "ci"}}} of the given evals' metrics (`ci`: [low, high],
    or None where the eval stored no interval)."""
    from saelab import resultstore as results

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results.metrics_long(results.ResultsStore(db)):
        if r["eval"] in evals:
            ci = None if r["ci_low"] is None else [r["ci_low"], r["ci_high"]]
            got = {"eval": r["eval"], "value": r["value"], "ci": ci}
            out.setdefault(r["name"], {})[r["metric"]] = got
    return out


def run(cfg: VariantsConfig, model: Any = None) -> dict[str, Any]:
    """Harvest (if the store is missing), train the sweep, evaluate, explain; the summary."""
    import saelab
    from saelab.activations.harvest import HarvestConfig
    from saelab.activations.models import load_model

    extras, notes = extra_evals(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    acts, sweep, db = str(out / "acts.zarr"), out / "sweep", str(out / "results.duckdb")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if model is None:
        model = load_model("smollm2-135m")
    # A finished store returns at once; an interrupted one resumes.
    saelab.harvest(
        HarvestConfig(
            out=acts,
            dataset=cfg.dataset,
            hooks=[cfg.hook],
            tokens=cfg.tokens,
            seq_len=cfg.seq_len,
            progress=cfg.progress,
            chunk_seqs=64 if cfg.tokens // cfg.seq_len >= 2000 else 16,
            resume=(out / "acts.zarr").exists(),
        ),
        model=model,
    )
    timings["harvest_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_cfg = saelab.TrainConfig(
        tokens=cfg.train_tokens or 0,
        progress=cfg.progress,
        log_every=10,
        save_every_tokens=200_000,  # an hours-long sweep: lose little when interrupted
    )
    # An interrupted sweep resumes from its last checkpoint; a finished one returns at once.
    saelab.train(
        sweep_configs(cfg),
        acts,
        cfg.hook,
        train_cfg,
        out=sweep,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        resume=(sweep / "training_state.pt").exists(),
    )
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    saelab.evaluate(
        saelab.EvalConfig(
            sae=str(sweep),
            acts=acts,
            db=db,
            evals=[*cfg.evals, *extras],
            settings={
                name: values
                for name, values in {
                    "core": {"max_tokens": cfg.max_eval_tokens},
                    "loss": {"sequences": cfg.loss_sequences},
                    "features": {"split": cfg.features_probing_split},
                    "probing": {"split": cfg.features_probing_split},
                }.items()
                if name in cfg.evals
            },
        ),
        model=model,
    )
    timings["eval_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if cfg.interp_sample and "features" in cfg.evals:
        for name in sorted(p.name for p in sweep.iterdir() if (p / "cfg.json").is_file()):
            saelab.explain(
                saelab.ExplainConfig(
                    db=db,
                    sae=name,
                    sample=cfg.interp_sample,
                    explainers=["baseline"],
                    scorers=["embedding"],
                    llm=saelab.LLMConfig(seed=cfg.seed),
                    progress=cfg.progress,
                    bootstrap=200,
                )
            )
    timings["autointerp_s"] = time.perf_counter() - t0
    summary = summarise(cfg, db, sweep, timings, extras)
    summary["extra_evals_left_out"] = notes
    return summary


def summarise(
    cfg: VariantsConfig, db: str, sweep: Path, timings: dict, extras: list[str] | None = None
) -> dict[str, Any]:
    """The table (one row per SAE), the frontier points and the comparisons with the papers;
    the `extras` evals' metrics in each row, each with its interval as `<metric>_ci`."""
    import saelab

    res = saelab.open_results(db)
    extra = extra_metrics(db, extras or [])
    metrics = res.metrics()
    scores = res.scores() if cfg.interp_sample else None
    rows = []
    for _, m in metrics.iterrows():
        name = m["name"]
        arch, target, suffix = parse_name(name)
        row = {
            "name": name,
            "seed_copy": bool(suffix),
            "architecture": arch,
            "target_l0": target,
            "l0": _num(m.get("l0")),
            "fvu": _num(m.get("fvu")),
            "ce_loss_score": _num(m.get("ce_loss_score")),
            "delta_loss": _num(m.get("delta_loss")),
            "dead_fraction": _num(m.get("dead_fraction")),
            "absorption_mean": _num(m.get("absorption_mean")),
            "absorption_letters_scored": _num(m.get("absorption_letters_scored")),
            "probe_acc_k1": _num(m.get("probe_acc_k1")),
            "probe_acc_k5": _num(m.get("probe_acc_k5")),
            "probe_acc_full": _num(m.get("probe_acc_full")),
        }
        for metric, got in extra.get(name, {}).items():
            key = metric if metric not in row else f"{got['eval']}.{metric}"
            row[key], row[f"{key}_ci"] = _num(got["value"]), got["ci"]
        if scores is not None and len(scores):
            mine = scores[(scores["sae_id"] == m["sae_id"]) & (scores["status"] == "ok")]
            row["embedding_auroc_mean"] = _num(mine["value"].mean()) if len(mine) else None
            row["embedding_n_latents"] = int(len(mine))
        rows.append(row)
    order = list(cfg.archs) + [a for a in cfg.seed_archs if a not in cfg.archs]
    rows.sort(key=lambda r: (r["target_l0"], r["seed_copy"], order.index(r["architecture"])))
    comparisons = compare_with_papers([r for r in rows if not r["seed_copy"]])
    comparisons["seed_stability"] = seed_stability(sweep)
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "store": store_summary(Path(cfg.out) / "acts.zarr", sweep),
        "timings": timings,
        "rows": rows,
        "comparisons": comparisons,
    }


def seed_stability(sweep: Path) -> dict[str, Any]:
    """For each seed copy, the latents it shares with its seed-0 twin (decoder cosine >= 0.7
    under a one-to-one matching), and the claim: ReLU shares more than TopK."""
    import saelab
    from saelab.evaluation.seeds import shared_latents

    out: dict[str, Any] = {}
    for folder in sorted(sweep.glob("*-seed1")):
        twin = sweep / folder.name.removesuffix("-seed1")
        if not (folder / "cfg.json").is_file() or not (twin / "cfg.json").is_file():
            continue
        shared = shared_latents(saelab.load_sae(str(twin)), saelab.load_sae(str(folder)))
        out[parse_name(twin.name)[0]] = {
            "pair": [twin.name, folder.name],
            "shared_fraction": shared.fraction,
            "mean_matched_cosine": shared.mean_cosine,
        }
    if "relu" in out and "topk" in out:
        out["relu_more_stable_than_topk"] = (
            out["relu"]["shared_fraction"] > out["topk"]["shared_fraction"]
        )
    return out


def store_summary(acts: Path, sweep: Path) -> dict[str, Any]:
    """What the store really holds (the corpus may run out before `tokens`) and what each SAE
    was trained on."""
    from saelab.activations.store import ActivationStore

    store = ActivationStore(str(acts))
    seqs, seq_len = store.committed_sequences(), int(store.attrs["seq_len"])
    trained = {
        p.name: json.loads((p / "cfg.json").read_text())["saelab"].get("trained_tokens")
        for p in sorted(sweep.iterdir())
        if (p / "cfg.json").is_file()
    }
    return {
        "dataset": store.attrs.get("dataset"),
        "sequences": seqs,
        "tokens": seqs * seq_len,
        "trained_tokens": sorted({t for t in trained.values() if t is not None}),
    }


def compare_with_papers(rows: list[dict]) -> dict[str, Any]:
    """The seed papers' claims, checked on these rows (at matched target L0)."""
    by_level: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_level.setdefault(r["target_l0"], {})[r["architecture"]] = r
    out: dict[str, Any] = {}
    # JumpReLU paper: JumpReLU and TopK reconstruct better than ReLU-L1 at matched L0, and
    # JumpReLU at least as well as TopK. Every JumpReLU row counts: defaults and named settings.
    claims, jump_vs_topk = [], []
    for level, archs in sorted(by_level.items()):
        relu, topk = archs.get("relu", {}), archs.get("topk", {})
        jumps = sorted(a for a in archs if a == "jumprelu" or a.startswith("jumprelu_"))
        for jump in jumps:
            j = archs[jump]
            if j.get("delta_loss") is None or topk.get("delta_loss") is None:
                continue
            jump_vs_topk.append(
                {
                    "target_l0": level,
                    "arch": jump,
                    "delta_loss": j["delta_loss"],
                    "topk_delta_loss": topk["delta_loss"],
                    "l0": j["l0"],
                    "topk_l0": topk["l0"],
                    "at_least_as_good": j["delta_loss"] <= topk["delta_loss"],
                    "l0_matched": _matched(j) and _matched(topk),
                }
            )
        for other in (*jumps, "topk"):
            o = archs.get(other, {})
            if relu.get("delta_loss") is None or o.get("delta_loss") is None:
                continue
            claims.append(
                {
                    "target_l0": level,
                    "arch": other,
                    "delta_loss": o["delta_loss"],
                    "relu_delta_loss": relu["delta_loss"],
                    "fvu": o["fvu"],
                    "relu_fvu": relu["fvu"],
                    "l0": o["l0"],
                    "relu_l0": relu["l0"],
                    "better_delta_loss": o["delta_loss"] < relu["delta_loss"],
                    "better_fvu": o["fvu"] < relu["fvu"],
                    # a comparison at matched L0 only means something where both matched it
                    "l0_matched": _matched(o) and _matched(relu),
                }
            )
    out["jumprelu_topk_beat_relu"] = claims
    out["jumprelu_at_least_topk"] = jump_vs_topk
    # Absorption papers: present in every architecture, lower for Matryoshka.
    mean_abs: dict[str, float] = {}
    for arch in sorted({r["architecture"] for r in rows}):
        vals = [r["absorption_mean"] for r in rows if r["architecture"] == arch]
        vals = [v for v in vals if v is not None]
        if vals:
            mean_abs[arch] = sum(vals) / len(vals)
    out["absorption_mean_by_arch"] = mean_abs
    out["absorption_present_everywhere"] = bool(mean_abs) and all(v > 0 for v in mean_abs.values())
    others = [v for a, v in mean_abs.items() if a != "matryoshka"]
    if "matryoshka" in mean_abs and others:
        out["matryoshka_lowest_absorption"] = mean_abs["matryoshka"] <= min(others)
    # Mutual Choice / Feature Choice paper: fewer dead latents than TopK at the same k.
    for arch in ("mutual_choice", "feature_choice"):
        dead = []
        for level, archs in sorted(by_level.items()):
            mc, tk = archs.get(arch, {}), archs.get("topk", {})
            if mc.get("dead_fraction") is not None and tk.get("dead_fraction") is not None:
                dead.append(
                    {
                        "target_l0": level,
                        f"{arch}_dead": mc["dead_fraction"],
                        "topk_dead": tk["dead_fraction"],
                        "fewer_dead": mc["dead_fraction"] < tk["dead_fraction"],
                    }
                )
        out[f"{arch}_fewer_dead"] = dead
    # Every architecture at its target: the evaluated L0 within 15% of it.
    out["l0_matched_within_15pct"] = {r["name"]: _matched(r) for r in rows}
    return out


def _matched(row: dict) -> bool:
    """Whether a row's evaluated L0 is within 15% of its target."""
    l0, target = row.get("l0"), row["target_l0"]
    return l0 is not None and abs(l0 - target) <= 0.15 * target


def merge_parts(parts: list[dict[str, Any]], supersede: bool = False) -> dict[str, Any]:
    """One summary from several pieces' summaries (`run`'s output, one L0 or one group of
    architectures each): their rows, the comparisons recomputed over all rows, each piece's
    config, command, store and machine kept under `parts`. A SAE in two pieces is an error
    (the pieces would disagree on which of its numbers to show) unless `supersede`: then a
    later piece's row replaces an earlier one's (an architecture whose defaults changed,
    retrained), and the replaced rows are kept whole under `superseded`, with their piece."""
    from saelab.base.errors import UserError

    rows: list[dict] = []
    seen: dict[str, int] = {}
    superseded: list[dict] = []
    stability: dict[str, Any] = {}
    order: list[str] = []
    for i, part in enumerate(parts):
        for r in part["rows"]:
            if r["name"] in seen:
                if not supersede:
                    raise UserError(
                        f"{r['name']} is in piece {seen[r['name']]} and piece {i}: merge "
                        "pieces that trained different SAEs, or pass --supersede to let the "
                        "later piece's row replace the earlier one's"
                    )
                old = next(x for x in rows if x["name"] == r["name"])
                rows.remove(old)
                superseded.append({"piece": seen[r["name"]], "by_piece": i, "row": old})
            seen[r["name"]] = i
            rows.append(r)
        cfg = part.get("config", {})
        for a in [*cfg.get("archs", []), *cfg.get("seed_archs", [])]:
            if a not in order:
                order.append(a)
        got = part.get("comparisons", {}).get("seed_stability", {})
        stability.update({k: v for k, v in got.items() if isinstance(v, dict)})
    order += sorted({r["architecture"] for r in rows} - set(order))
    rows.sort(key=lambda r: (r["target_l0"], r["seed_copy"], order.index(r["architecture"])))
    comparisons = compare_with_papers([r for r in rows if not r["seed_copy"]])
    if "relu" in stability and "topk" in stability:
        stability["relu_more_stable_than_topk"] = (
            stability["relu"]["shared_fraction"] > stability["topk"]["shared_fraction"]
        )
    comparisons["seed_stability"] = stability
    keep = ("label", "config", "store", "timings", "machine", "command")
    out = {
        "rows": rows,
        "comparisons": comparisons,
        "parts": [{k: p[k] for k in keep if k in p} for p in parts],
    }
    if superseded:
        out["superseded"] = superseded
    return out


def write_result(summary: dict[str, Any], path: Path) -> None:
    """The JSON and, beside it, the frontier plots (plotly.js from its CDN keeps it small)."""
    path.write_text(json.dumps(summary, indent=2) + "\n")
    frontier_figure(summary["rows"]).write_html(path.with_suffix(".html"), include_plotlyjs="cdn")
    print(format_table(summary["rows"]))
    print(json.dumps(summary["comparisons"], indent=2))
    print(f"-> {path}")


def frontier_figure(rows: list[dict]):
    """Δloss vs L0 and FVU vs L0 per architecture (plotly), from `summarise`'s rows."""
    from saelab.evaluation.compare import frontier_figure as figure

    return figure(
        rows,
        (
            ("l0", "delta_loss", "Δ loss (nats) vs L0"),
            ("l0", "fvu", "FVU vs L0"),
            ("l0", "absorption_mean", "absorption vs L0"),
        ),
    )


def format_table(rows: list[dict]) -> str:
    """A markdown table of the rows; a metric with a `<metric>_ci` interval is shown with it."""
    cols = [
        "name",
        "target_l0",
        "l0",
        "fvu",
        "delta_loss",
        "ce_loss_score",
        "dead_fraction",
        "absorption_mean",
        "probe_acc_k1",
        "probe_acc_full",
        "embedding_auroc_mean",
    ]
    extra = [k.removesuffix("_ci") for r in rows for k in r if k.endswith("_ci")]
    cols += [c for c in dict.fromkeys(extra) if c not in cols]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(_fmt(r.get(c), r.get(f"{c}_ci")) for c in cols))
    return "\n".join(lines)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(v: Any, ci: list[float] | None = None) -> str:
    """A cell: the value, and its 95% interval where there is one (± half-width when about
    centred on the value, its arms within 25% of each other; else [low, high])."""
    if v is None:
        return "-"
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    if ci is None or not isinstance(v, float):
        return text
    low, high = ci
    half = (high - low) / 2
    if abs((v - low) - (high - v)) <= 0.25 * half + 1e-12:
        return f"{text} ± {half:.2g}"
    return f"{text} [{low:.3g}, {high:.3g}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = VariantsConfig(out="")
    p.add_argument("--out", default="runs/bench-variants", help="working folder")
    p.add_argument("--tokens", type=int, default=d.tokens, help="tokens harvested")
    p.add_argument("--dataset", default=d.dataset, help="corpus spec (builtin: 4.7M tokens)")
    p.add_argument("--train-tokens", type=int, help="training tokens (default: one pass)")
    p.add_argument("--hook", default=d.hook)
    p.add_argument("--d-sae", type=int, default=d.d_sae)
    p.add_argument("--l0s", default=",".join(map(str, d.l0s)), help="comma-separated L0s")
    p.add_argument(
        "--archs",
        default=",".join(d.archs),
        help="comma-separated architectures, or 'all' (every registered one that trains from a store)",
    )
    p.add_argument(
        "--seed-archs",
        default=",".join(SEED_ARCHS),
        help="architectures also trained with seed+1 at the middle L0 ('' for none)",
    )
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-eval-tokens", type=int)
    p.add_argument("--loss-sequences", type=int, default=d.loss_sequences)
    p.add_argument(
        "--features-probing-split",
        default=d.features_probing_split,
        choices=["all", "train", "test"],
        help="store split of the dashboards and probing (test: faster)",
    )
    p.add_argument("--interp-sample", type=int, default=d.interp_sample)
    p.add_argument(
        "--extra-evals", nargs="*", default=[], metavar="EVAL",
        help="further registered evals on every SAE (e.g. stability scr tpp ravel unlearning); "
        "the table shows their metrics with 95%% intervals",
    )  # fmt: skip
    p.add_argument("--label", default="", help="suffix of the result file (e.g. small)")
    p.add_argument("--result", help="result JSON path (default benchmarks/results/variants-…)")
    p.add_argument(
        "--merge", nargs="+", metavar="PIECE.json",
        help="join the result files of pieces (one L0 each) into one (--result, default "
        "benchmarks/results/variants-cpu.json); trains nothing",
    )  # fmt: skip
    p.add_argument(
        "--supersede", action="store_true",
        help="with --merge: a SAE in two pieces takes the later piece's row (the earlier one "
        "is kept under `superseded`) instead of being an error",
    )  # fmt: skip
    args = p.parse_args()
    results = Path(__file__).parent / "results"
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        merged = merge_parts(parts, supersede=args.supersede)
        merged["command"] = " ".join(["python", *sys.argv])
        write_result(merged, Path(args.result or results / "variants-cpu.json"))
        return
    cfg = VariantsConfig(
        out=args.out,
        tokens=args.tokens,
        dataset=args.dataset,
        train_tokens=args.train_tokens,
        hook=args.hook,
        d_sae=args.d_sae,
        l0s=tuple(int(v) for v in args.l0s.split(",")),
        archs=store_archs() if args.archs == "all" else tuple(args.archs.split(",")),
        seed_archs=tuple(a for a in args.seed_archs.split(",") if a),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_eval_tokens=args.max_eval_tokens,
        loss_sequences=args.loss_sequences,
        features_probing_split=args.features_probing_split,
        interp_sample=args.interp_sample,
        extra_evals=tuple(args.extra_evals),
    )
    from benchmarks.machine import machine_info

    summary = run(cfg)
    summary["machine"] = machine_info()
    summary["command"] = " ".join(["python", *sys.argv])
    label = f"-{args.label}" if args.label else ""
    device = "cpu" if summary["machine"]["device"] == "cpu" else "gpu"
    summary["label"] = args.label
    write_result(summary, Path(args.result or results / f"variants-{device}{label}.json"))


if __name__ == "__main__":
    main()
