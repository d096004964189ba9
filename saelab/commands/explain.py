"""`saelab explain`: explain and score latents of an SAE in the results store with an LLM."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from saelab.commands.flags import add_fields, count, given

if TYPE_CHECKING:
    from saelab.autointerp.pipeline import ExplainSummary
    from saelab.resultstore import ResultsStore

HELP = "explain latents and score the explanations (with an LLM)"
ON_INTERRUPT = (
    "the latents finished before it are stored; rerun the same command to continue (cached "
    "answers cost nothing)"
)


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.autointerp import registry
    from saelab.autointerp.config import ExplainConfig, LLMConfig, WindowConfig

    base = add_fields(
        p, ExplainConfig, skip=("llm", "windows"), required=("db", "sae"),
        choices={"explainers": registry.names(registry.EXPLAINERS),
                 "scorers": registry.names(registry.SCORERS)},
    )  # fmt: skip
    endpoint = p.add_argument_group("the LLM endpoint")
    llm = add_fields(
        endpoint, LLMConfig, names={"model": "--llm", "timeout_s": "--timeout"},
        helps={"base_url": "OpenAI-compatible endpoint (default: serve the embedded model locally)"},
    )  # fmt: skip
    counts = p.add_argument_group("window counts")
    windows = add_fields(counts, WindowConfig)
    counts.add_argument(
        "--score-windows", type=count, metavar="N",
        help="activating and silent windows per scorer (sets both counts)",
    )  # fmt: skip
    p.set_defaults(base_flags=base, llm_flags=llm, window_flags=windows)


def run(args: argparse.Namespace) -> int:
    from saelab.autointerp.config import ExplainConfig, LLMConfig, WindowConfig
    from saelab.autointerp.pipeline import explain_features
    from saelab.resultstore import ResultsStore

    windows = given(args, args.window_flags)
    if args.score_windows is not None:
        windows.setdefault("score_activating", args.score_windows)
        windows.setdefault("score_nonactivating", args.score_windows)
    cfg = ExplainConfig(
        **given(args, args.base_flags),
        llm=LLMConfig(**given(args, args.llm_flags)),
        windows=WindowConfig(**windows),
    )
    cfg.validate()
    store = ResultsStore(cfg.db, mode="update")  # opened once; a missing file is never created
    print_summary(store, explain_features(cfg, store=store))
    return 0


def print_summary(store: ResultsStore, summary: ExplainSummary) -> None:
    """The run's one-line account and its mean scores."""
    u = summary.usage
    print(
        f"saelab explain: {len(summary.features) - summary.skipped} latents explained and scored "
        f"({summary.skipped} already done) for SAE {summary.sae_id} in {summary.seconds:.0f} s; "
        f"{u.requests} requests, {u.cache_hits} cached, {u.retries} retries, "
        f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens; run {summary.run_id}"
    )
    _report(store, summary.sae_id, summary.features)


def _report(store: ResultsStore, sae_id: str, features: list[int]) -> None:
    """Mean score per explainer and scorer (the baseline row is the floor to beat)."""
    from collections import defaultdict

    from saelab import resultstore as results

    chosen = set(features)
    cells = defaultdict(list)
    for row in results.interp_scores(store, sae_id):
        if row["feature"] in chosen and row["value"] is not None:
            cells[(row["explainer"], row["scorer"])].append(row["value"])
    if not cells:
        print("saelab explain: no latent could be scored (see the scores table's status column)")
        return
    scorers = sorted({s for _, s in cells})
    print(
        f"{'explainer':<10}" + "".join(f"{s:>22}" for s in scorers) + "   (mean ± sd over latents)"
    )
    for explainer in sorted({e for e, _ in cells}):
        line = f"{explainer:<10}"
        for s in scorers:
            values = cells.get((explainer, s))
            line += f"{_mean_sd(values):>15} n={len(values):<4}" if values else f"{'-':>22}"
        print(line)


def _mean_sd(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.3f} ± {sd:.3f}"
