"""`saelab explain`: explain and score latents of an SAE in the results store with an LLM."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from autointerp import registry
    from autointerp.config import LLMConfig, WindowConfig

    explainers, scorers = registry.names(registry.EXPLAINERS), registry.names(registry.SCORERS)

    p = sub.add_parser("explain", help="explain and score latents with an LLM")
    p.add_argument("--db", required=True, help="the DuckDB results file")
    p.add_argument("--sae", required=True, help="SAE id, id prefix or name in the results file")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--features", help="a range a:b or a list 3,7,9 (default 0:20)")
    which.add_argument("--sample", type=int, help="a seeded uniform sample of N latents")
    p.add_argument(
        "--base-url", help="OpenAI-compatible endpoint (default: serve the embedded model locally)"
    )
    p.add_argument("--llm", help="model name at the endpoint (default: the first it lists)")
    p.add_argument(
        "--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)"
    )
    p.add_argument("--explainers", nargs="+", choices=explainers,
                   default=registry.defaults(registry.EXPLAINERS))  # fmt: skip
    p.add_argument("--scorers", nargs="+", choices=scorers,
                   default=registry.defaults(registry.SCORERS))  # fmt: skip
    d = LLMConfig()
    p.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        help="requests in flight (default: 8, or 1 against the local server)",
    )
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=d.max_retries)
    p.add_argument("--seed", type=int, default=d.seed)
    w = WindowConfig()
    p.add_argument("--explain-top", type=int, default=w.explain_top)
    p.add_argument("--score-windows", type=int, default=w.score_activating,
                   help="activating and silent windows per scorer (each)")  # fmt: skip
    p.add_argument("--simulation-windows", type=int, default=w.simulation_windows)
    p.add_argument("--no-logprobs", action="store_true", help="never ask for logprobs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autointerp.config import ExplainConfig, LLMConfig, WindowConfig
    from autointerp.pipeline import explain_features

    cfg = ExplainConfig(
        db=args.db,
        sae=args.sae,
        features=args.features,
        sample=args.sample,
        explainers=list(args.explainers),
        scorers=list(args.scorers),
        llm=LLMConfig(
            base_url=args.base_url,
            model=args.llm,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            max_retries=args.max_retries,
            seed=args.seed,
        ),
        windows=WindowConfig(
            explain_top=args.explain_top,
            score_activating=args.score_windows,
            score_nonactivating=args.score_windows,
            simulation_windows=args.simulation_windows,
        ),
        logprobs=not args.no_logprobs,
        progress=not args.no_progress,
    )
    print_summary(args.db, explain_features(cfg))
    return 0


def print_summary(db: str, summary) -> None:
    """The run's one-line account and its mean scores."""
    u = summary.usage
    print(
        f"saelab explain: {len(summary.features) - summary.skipped} latents explained and scored "
        f"({summary.skipped} already done) for SAE {summary.sae_id} in {summary.seconds:.0f} s; "
        f"{u.requests} requests, {u.cache_hits} cached, {u.retries} retries, "
        f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens; run {summary.run_id}"
    )
    _report(db, summary.sae_id, summary.features)


def _report(db: str, sae_id: str, features: list[int]) -> None:
    """Mean score per explainer and scorer (the baseline row is the floor to beat)."""
    from collections import defaultdict

    import resultstore as results

    chosen = set(features)
    cells = defaultdict(list)
    for row in results.interp_scores(db, sae_id):
        if row["feature"] in chosen and row["value"] is not None:
            cells[(row["explainer"], row["scorer"])].append(row["value"])
    if not cells:
        print("saelab explain: no latent could be scored (see the scores table's status column)")
        return
    scorers = sorted({s for _, s in cells})
    print(f"{'explainer':<10}" + "".join(f"{s:>12}" for s in scorers))
    for explainer in sorted({e for e, _ in cells}):
        line = f"{explainer:<10}"
        for s in scorers:
            values = cells.get((explainer, s))
            line += (
                f"{sum(values) / len(values):>8.3f} n={len(values):<2}" if values else f"{'-':>12}"
            )
        print(line)
