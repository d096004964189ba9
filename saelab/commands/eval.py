"""`saelab eval`: evaluate an SAE (or a sweep folder) into the DuckDB results store.

Each registered eval's settings dataclass gives its flags, `--EVAL-FIELD` (the loss eval's
`sequences` is `--loss-sequences`), grouped under the eval's name; a field may also name a flag
shared with other evals (`--split` sets the core and loss evals' split at once).
"""

from __future__ import annotations

import argparse

from saelab.commands.flags import add_fields, add_shared, given

HELP = "evaluate SAEs into the results database"
ON_INTERRUPT = (
    "every eval that finished before it is stored; the one running was not written; rerun "
    "to evaluate the rest"
)


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.evaluation.registry import all_evals, default_evals
    from saelab.evaluation.runner import EvalConfig

    specs = all_evals()
    base = add_fields(
        p, EvalConfig, skip=("evals", "settings"), required=("sae", "acts", "db"),
        helps={"sae": "an SAE folder or a sweep folder of them", "acts": "the activation store",
               "db": "the DuckDB results file", "hook": "hook to read (default: the SAE's)"},
    )  # fmt: skip
    p.add_argument(
        "--evals", nargs="+", choices=list(specs), metavar="EVAL",
        help=f"any of {', '.join(specs)} (default: {' '.join(default_evals())})",
    )  # fmt: skip
    settings = {}
    for name, spec in specs.items():
        group = p.add_argument_group(f"the {name} eval ({spec.description})")
        settings[name] = add_fields(group, spec.settings, prefix=f"{name}-")
    shared = add_shared(p, {name: [(f"{name}-", s.settings)] for name, s in specs.items()})
    p.set_defaults(base_flags=base, settings_flags=settings, shared_flags=shared)


def settings_from(args: argparse.Namespace, running: list[str]) -> dict[str, dict]:
    """Each eval's given settings: its own flags, then the shared flags for fields not set.
    A shared flag sets only the evals that run, and must reach at least one of them."""
    from saelab.base.errors import UserError

    out = {name: given(args, flags) for name, flags in args.settings_flags.items()}
    reached: dict[str, list[str]] = {}
    for flag in args.shared_flags:
        value = getattr(args, flag.dest, None)
        name, field = flag.field.split(".", 1)
        if value is None:
            continue
        reached.setdefault(flag.flag, [])
        if name in running:
            out[name].setdefault(field, value)
            reached[flag.flag].append(name)
    for flag, names in reached.items():
        if not names:
            owners = sorted({f.field.split(".")[0] for f in args.shared_flags if f.flag == flag})
            raise UserError(
                f"{flag} sets the {', '.join(owners)} eval(s), none of which runs here; add one "
                "to --evals or drop the flag"
            )
    return {name: values for name, values in out.items() if values}


def run(args: argparse.Namespace) -> int:
    from saelab.evaluation.registry import default_evals
    from saelab.evaluation.runner import EvalConfig, evaluate

    values = given(args, args.base_flags)
    if args.evals:
        values["evals"] = list(args.evals)
    running = values.get("evals") or default_evals()
    cfg = EvalConfig(**values, settings=settings_from(args, running))
    out = evaluate(cfg)
    print(f"saelab eval: {len(out)} SAE(s) evaluated into {cfg.db}")
    return 0
