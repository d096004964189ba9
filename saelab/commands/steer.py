"""`saelab steer`: steer the model with SAE latents; clean and steered text side by side with the
metrics (KL on neutral text, latent activation, concept strength, perplexity), stored."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from saelab.base.fs import check_output_file
from saelab.commands.flags import add_fields, given

HELP = "steer the model with SAE latents, measured"
ON_INTERRUPT = (
    "runs are written only when the experiment completes, so nothing of this one is stored"
)


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.steering.generate import Sampling
    from saelab.steering.harness import MODES, UNITS
    from saelab.steering.interventions import POSITIONS
    from saelab.steering.run import SteerConfig

    flags = add_fields(
        p, SteerConfig, skip=("features", "sweep", "prompts", "sampling"), required=("db", "sae"),
        names={"n_samples": "--samples"},
        choices={"mode": MODES, "unit": UNITS, "positions": POSITIONS,
                 "ablation": ("zero", "mean")},
        helps={"sae": "SAE folder, or its id / name in the results file",
               "db": "the DuckDB results file (SAE row, latent statistics); receives the runs"},
    )  # fmt: skip
    p.add_argument("--feature", type=int, action="append", required=True,
                   help="latent to steer (repeat for several at once)")  # fmt: skip
    p.add_argument("--sweep", help="strengths S1,S2,... (a frontier, saved as HTML)")
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--prompt", action="append", help="generation prompt (repeatable)")
    texts.add_argument("--prompts", help="a file with one prompt per line")
    sampling = add_fields(p.add_argument_group("sampling"), Sampling)
    p.add_argument("--html", help="frontier HTML of a sweep (default: beside the results file)")
    p.set_defaults(flags=flags, sampling_flags=sampling)


def _prompts(args) -> list[str] | None:
    from saelab.base.errors import UserError

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
    from saelab.base.errors import UserError

    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--sweep {text!r}: give numbers like 0.5,1,2,4") from None


def run(args: argparse.Namespace) -> int:
    from saelab.base.errors import UserError
    from saelab.steering.generate import Sampling
    from saelab.steering.run import SteerConfig, frontier_html, steer

    values = given(args, args.flags)
    prompts = _prompts(args)
    if prompts is not None:
        values["prompts"] = prompts
    cfg = SteerConfig(
        **values, features=list(args.feature), sweep=_sweep(args.sweep),
        sampling=Sampling(**given(args, args.sampling_flags)),
    )  # fmt: skip
    if args.html is not None and not cfg.sweep:
        raise UserError("--html writes a sweep's frontier: give --sweep S1,S2,... or drop --html")
    if cfg.sweep:  # before any work: the HTML must be writable where it goes
        check_output_file(args.html or Path(cfg.db).with_name("steering.html"),
                          "the frontier HTML", "steering.html")  # fmt: skip
    report = steer(cfg)
    for row in report.runs:
        s = "-" if row.strength is None else f"{row.strength:.3g}"
        print(
            f"\n== {row.method} (strength {s}): KL {row.kl:.3f} nats, latent activation "
            f"{row.feature_act:.3f}, concept {row.concept:.3f} ({row.concept_kind}), "
            f"perplexity {row.perplexity:.1f}  [run {row.run_id}]"
        )
        if row.method == "none":
            continue
        for sample in report.samples[row.run_id]:
            _side_by_side(sample.prompt, sample.clean_text, sample.steered_text)
    if cfg.sweep:
        html = args.html or str(Path(cfg.db).with_name(f"steering-{report.sweep_id}.html"))
        print(f"\nfrontier: {frontier_html(report, html)}")
    where = f"stored in {cfg.db}" if cfg.store else "not stored (--no-store)"
    print(f"\nsaelab steer: {len(report.runs)} runs {where} (sweep {report.sweep_id})")
    return 0


def _side_by_side(prompt: str, clean: str, steered: str, width: int = 48) -> None:
    left = textwrap.wrap(prompt + " | " + clean.replace("\n", " ⏎ "), width) or [""]
    right = textwrap.wrap(prompt + " | " + steered.replace("\n", " ⏎ "), width) or [""]
    print(f"  {'clean':<{width}}   steered")
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"  {a:<{width}}   {b}")
