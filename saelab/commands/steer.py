"""`saelab steer`: steer the model with SAE latents; clean and steered text side by side with the
metrics (KL on neutral text, latent activation, concept strength, perplexity), stored."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from circuits.steering.generate import Sampling
    from circuits.steering.harness import MODES, UNITS
    from circuits.steering.interventions import POSITIONS

    p = sub.add_parser("steer", help="steer the model with SAE latents, measured")
    p.add_argument("--db", required=True, help="the DuckDB results file (SAE row, statistics)")
    p.add_argument("--sae", required=True, help="SAE folder, or id / name in the results file")
    p.add_argument("--feature", type=int, action="append", required=True,
                   help="latent to steer (repeat for several at once)")  # fmt: skip
    p.add_argument("--mode", default="add", help=f"one of {', '.join(MODES)} (default add)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--strength", type=float, help="in units of the latent's --unit statistic")
    how.add_argument("--sweep", help="strengths S1,S2,... (a frontier, saved as HTML)")
    how.add_argument("--target-kl", type=float, help="find the strength giving this KL (nats)")
    p.add_argument("--unit", default="max_act", choices=UNITS)
    p.add_argument("--ablation", default="zero", choices=["zero", "mean"])
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--prompt", action="append", help="generation prompt (repeatable)")
    texts.add_argument("--prompts", help="a file with one prompt per line")
    p.add_argument("--positions", default="all", choices=POSITIONS)
    d = Sampling()
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--samples", type=int, default=2, help="generations per prompt")
    p.add_argument("--explanation", help="the concept (default: the stored LLM explanation)")
    p.add_argument("--no-baseline", action="store_true", help="skip the DiffMean baseline")
    p.add_argument("--model", help="model spec (default: the SAE's)")
    p.add_argument("--html", help="frontier HTML of a sweep (default: beside the results file)")
    p.set_defaults(func=run)


def _prompts(args) -> list[str] | None:
    from saelab_base.errors import UserError

    if args.prompts:
        try:
            lines = Path(args.prompts).read_text().splitlines()
        except OSError as err:
            raise UserError(f"cannot read --prompts {args.prompts!r}: {err.strerror}") from None
        lines = [x for x in (line.strip() for line in lines) if x]
        if not lines:
            raise UserError(f"--prompts {args.prompts!r} holds no prompt")
        return lines
    return args.prompt


def _sweep(text: str | None) -> list[float] | None:
    from saelab_base.errors import UserError

    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--sweep {text!r}: give numbers like 0.5,1,2,4") from None


def run(args: argparse.Namespace) -> int:
    from circuits.steering.generate import Sampling
    from circuits.steering.run import PROMPTS, SteerConfig, frontier_html, steer

    cfg = SteerConfig(
        db=args.db, sae=args.sae, features=list(args.feature), mode=args.mode,
        strength=args.strength, sweep=_sweep(args.sweep), target_kl=args.target_kl,
        unit=args.unit, ablation=args.ablation, positions=args.positions,
        prompts=_prompts(args) or list(PROMPTS),
        sampling=Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          seed=args.seed),
        n_samples=args.samples, explanation=args.explanation, baseline=not args.no_baseline,
        model=args.model,
    )  # fmt: skip
    report = steer(cfg)
    for row in report.runs:
        s = "-" if row["strength"] is None else f"{row['strength']:.3g}"
        print(
            f"\n== {row['method']} (strength {s}): KL {row['kl']:.3f} nats, latent activation "
            f"{row['feature_act']:.3f}, concept {row['concept']:.3f} ({row['concept_kind']}), "
            f"perplexity {row['perplexity']:.1f}  [run {row['run_id']}]"
        )
        if row["method"] == "none":
            continue
        for sample in report.samples[row["run_id"]]:
            _side_by_side(sample["prompt"], sample["clean_text"], sample["steered_text"])
    if cfg.sweep:
        html = args.html or str(Path(args.db).with_name(f"steering-{report.sweep_id}.html"))
        print(f"\nfrontier: {frontier_html(report, html)}")
    print(f"\nsaelab steer: {len(report.runs)} runs stored in {args.db} (sweep {report.sweep_id})")
    return 0


def _side_by_side(prompt: str, clean: str, steered: str, width: int = 48) -> None:
    left = textwrap.wrap(prompt + " | " + clean.replace("\n", " ⏎ "), width) or [""]
    right = textwrap.wrap(prompt + " | " + steered.replace("\n", " ⏎ "), width) or [""]
    print(f"  {'clean':<{width}}   steered")
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"  {a:<{width}}   {b}")
