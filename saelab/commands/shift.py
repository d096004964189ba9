"""`saelab shift`: SHIFT, removing a classifier's reliance on gender by ablating the SAE
features it uses that a judge finds about gender (see circuits/shift.py)."""

from __future__ import annotations

import argparse

from saelab.commands.flags import add_fields, given

HELP = "SHIFT: ablate the gender features a profession classifier relies on, and measure it"
ON_INTERRUPT = "a SHIFT run is written only when complete, so nothing of this one is stored"


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.circuits.shift import ShiftConfig
    from saelab.circuits.shift_judge import JUDGES

    flags = add_fields(
        p, ShiftConfig, required=("sae",), choices={"judge": JUDGES},
        helps={"sae": "SAE folders (one per hook, none after the probe's hook) or a sweep folder"},
    )  # fmt: skip
    p.add_argument("--show", type=int, default=12, help="ablated features to print")
    p.set_defaults(flags=flags)


def run(args: argparse.Namespace) -> int:
    from saelab.base.errors import UserError
    from saelab.circuits.shift import ShiftConfig, run_shift

    if args.show < 0:
        raise UserError(f"--show must be >= 0 (ablated features to print), got {args.show}")
    cfg = ShiftConfig(**given(args, args.flags))
    result = run_shift(cfg)
    print(report(result, args.show))
    if result.run_id:
        print(f"saelab shift: run {result.run_id} written to {cfg.db}")
    return 0


def report(result, show: int = 12) -> str:
    from saelab.circuits.shift import INTERVAL, METHOD_LABELS, METHODS

    n = result.n_texts
    lines = [
        f"SHIFT: {result.config.professions[0]} vs {result.config.professions[1]}, probe at "
        f"{result.probe_hook}, SAEs at {', '.join(result.hooks)}; {n['biased_train']} biased "
        f"training texts, {n['test']} balanced test texts ({result.data_source})",
        f"judge: {result.judge}; 95% intervals: {INTERVAL}; {result.seconds:.0f} s",
        f"  {'classifier':28s} {'ablated':>7s}  {'profession':22s} {'gender':22s}",
    ]
    for method in METHODS:
        prof, gender = result.accuracy(method, "profession"), result.accuracy(method, "gender")
        if prof is None:
            continue
        lines.append(
            f"  {METHOD_LABELS[method]:28s} {prof.n_ablated:7d}  {_cell(prof):22s} {_cell(gender)}"
        )
    ablated = result.ablated
    n_cand = sum(f.kind == "latent" for f in result.features)
    lines.append(f"ablated latents: {len(ablated)} of {n_cand} candidates judged spurious")
    for f in ablated[:show]:
        v = f.verdict
        about = f"  {v.description[:60]!r}" if v.description else ""
        lines.append(
            f"  {f.hook} #{f.feature:<6d} effect {f.effect:+.3f}  r(gender) {v.corr_gender:+.2f}"
            f"  r(profession) {v.corr_profession:+.2f}{about}"
        )
    if len(ablated) > show:
        lines.append(f"  … {len(ablated) - show} more (raise --show)")
    return "\n".join(lines)


def _cell(a) -> str:
    return f"{a.accuracy:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]"
