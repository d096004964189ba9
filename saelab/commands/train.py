"""`saelab train`: train one SAE, or a sweep of them in one pass, on a harvested store.

Every flag comes from a config dataclass: the run's (`TrainRunConfig`), the trainer's
(`TrainConfig`), and the SAE configs of every registered architecture (a field several
architectures share is one flag); `--set FIELD=VALUE` reaches any field by name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from saelab.base.errors import UserError
from saelab.commands.flags import add_fields, field_docs, given

HELP = "train an SAE (or a sweep of SAEs in one pass) on an activation store"
DESCRIPTION = (
    "Train SAEs on one hook of a store. Give --arch and its options for one SAE, or --sweep "
    "FILE.toml for many variants trained on every batch."
)
SAE_SKIP = ("d_in", "name", "seed", "dtype")
"""SAE config fields without a flag: the width comes from the store, the name from the
architecture and its settings, the seed from --seed."""


def ON_INTERRUPT(args: argparse.Namespace) -> str:
    from saelab.sae.checkpoint import STATE_FILE

    if args.out and (Path(args.out) / STATE_FILE).is_file():
        return f"the last checkpoint in {args.out} is kept; rerun with --resume to continue from it"
    return "no checkpoint was written yet (one is written every --save-every tokens and at the end)"


def configure(p: argparse.ArgumentParser) -> None:
    from saelab.sae.config import SAEConfig, TrainConfig
    from saelab.sae.registry import architectures
    from saelab.sae.run import TrainRunConfig

    run = add_fields(
        p, TrainRunConfig, skip=("saes", "train", "overrides", "e2e"), required=("acts", "out"),
        helps={"out": "output folder (one subfolder per SAE of a sweep)",
               "hook": "hook name in the store (or [train] hook in the sweep file)"},
    )  # fmt: skip
    classes = architectures()
    p.add_argument(
        "--arch",
        choices=sorted(classes),
        help="architecture of a single SAE (default topk); any registered with "
        "saelab.sae.registry.register_architecture or the entry point saelab.architectures",
    )
    sae = p.add_argument_group("SAE options (every architecture)")
    common = add_fields(
        sae, SAEConfig, skip=SAE_SKIP, helps=_per_architecture_defaults(SAEConfig, classes),
        hide_default=tuple(_per_architecture_defaults(SAEConfig, classes)),
    )  # fmt: skip
    arch = p.add_argument_group("architecture options (the architectures that have each)")
    owners: dict[str, list[str]] = {}
    for name, cls in sorted(classes.items()):
        for f in dataclasses.fields(cls.config_class):
            if f.name not in {c.field for c in common} and f.name not in SAE_SKIP:
                owners.setdefault(f.name, []).append(name)
    arch_flags = []
    for field_name, names in owners.items():
        cls = _widest(field_name, [classes[n].config_class for n in names])
        help_text, differ = _shared_help(field_name, {n: classes[n].config_class for n in names})
        arch_flags += add_fields(
            arch, cls, only=(field_name,), helps={field_name: help_text},
            hide_default=(field_name,) if differ else (),
        )  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="set any config field of the architecture (JSON value, e.g. --set k=32); repeatable",
    )  # fmt: skip
    trainer = p.add_argument_group("training options")
    train = add_fields(
        trainer, TrainConfig, skip=("tokens", "hook", "extra"),
        names={"save_every_tokens": "--save-every", "autocast_bf16": "--bf16"},
    )  # fmt: skip
    from saelab.sae.e2e import E2EConfig

    e2e_group = p.add_argument_group(
        "end-to-end fine-tuning (Braun et al. 2024): --e2e kl|kl+ds --from CHECKPOINT"
    )
    e2e = add_fields(
        e2e_group, E2EConfig, prefix="e2e-", names={"mode": "--e2e", "sae": "--from"},
        helps={"mode": "fine-tune the SAE of --from end to end with the live model: `kl` "
               "(KL + sparsity) or `kl+ds` (plus downstream MSE)"},
    )  # fmt: skip
    p.set_defaults(
        run_flags=run, common_flags=common, arch_flags=arch_flags, train_flags=train, e2e_flags=e2e
    )


def _widest(field_name: str, configs: list[type]) -> type:
    """The config whose annotation of a shared field parses every architecture's values: one
    with a float (BatchTopK's k may be fractional; TopK's is then checked whole), else the
    first."""
    import typing

    for cls in configs:
        if "float" in str(typing.get_type_hints(cls)[field_name]):
            return cls
    return configs[0]


def _shared_help(field_name: str, configs: dict[str, type]) -> tuple[str, bool]:
    """The help of an architecture option and whether its default differs between the
    architectures that have it. Where the defaults differ, the help gives each architecture's
    default and, where the docstrings differ too, each one's (a transcoder's `target_hook` and a
    CLT's template of it); otherwise one docstring, as before."""
    defaults = {n: getattr(c(), field_name) for n, c in configs.items()}
    if len(set(map(repr, defaults.values()))) == 1:
        doc = field_docs(_widest(field_name, list(configs.values()))).get(field_name, "")
        return f"{doc} ({', '.join(configs)})", False
    docs = {n: field_docs(c).get(field_name, "") for n, c in configs.items()}
    if len(set(docs.values())) == 1:
        text = next(iter(docs.values()))
    else:
        text = "; ".join(f"{n}: {d}" for n, d in docs.items())
    shown = ", ".join(f"{n} {v!r}" for n, v in defaults.items())
    return f"{text} (default by architecture: {shown})", True


def _per_architecture_defaults(base: type, classes: dict[str, type]) -> dict[str, str]:
    """Help texts for the common fields whose default differs between architectures."""
    docs = field_docs(base)
    out = {}
    for f in dataclasses.fields(base):
        if f.name in SAE_SKIP:
            continue
        defaults = {n: getattr(c.config_class(), f.name) for n, c in sorted(classes.items())}
        if len(set(map(repr, defaults.values()))) > 1:
            shown = ", ".join(
                f"{n} {v:g}" if isinstance(v, float) else f"{n} {v}" for n, v in defaults.items()
            )
            out[f.name] = f"{docs.get(f.name, '')} (default by architecture: {shown})"
    return out


def run(args: argparse.Namespace) -> int:
    from saelab.sae.config import TrainConfig
    from saelab.sae.run import TrainRunConfig, run_training

    values = given(args, args.run_flags)
    train = TrainConfig(tokens=1, **given(args, args.train_flags))
    e2e = _e2e_config(args)
    if e2e is not None:
        cfg = TrainRunConfig(**values, e2e=e2e, train=train)
        report(run_training(cfg))
        return 0
    saes, overrides = _sae_configs(args)
    cfg = TrainRunConfig(**values, saes=saes, overrides=overrides, train=train)
    report(run_training(cfg))
    return 0


def report(result) -> None:
    """The run's one line (rank 0 only)."""
    if result.is_main:
        names = ", ".join(result.saes)
        print(
            f"saelab train: {result.tokens:,} tokens, {len(result.saes)} SAE(s) ({names}) -> {result.out}"
        )


def _e2e_config(args: argparse.Namespace):
    """The E2EConfig of --e2e/--from and the --e2e-* options (None without them)."""
    from saelab.sae.e2e import E2EConfig

    values = given(args, args.e2e_flags)
    if not values:
        return None
    if "mode" not in values or "sae" not in values:
        raise UserError(
            "end-to-end fine-tuning takes --e2e kl|kl+ds and --from CHECKPOINT_FOLDER together"
        )
    shaping = {**given(args, args.common_flags), **given(args, args.arch_flags)}
    if args.arch or args.sweep or shaping or args.set:
        raise UserError(
            "--e2e fine-tunes the SAE of --from as it is; drop --arch, --sweep and the SAE "
            "options (its learning rate is --e2e-lr)"
        )
    return E2EConfig(**values)


def _sae_configs(args: argparse.Namespace) -> tuple[list, dict[str, Any]]:
    """The single SAE of --arch with its options; or, with --sweep, none (the run reads the
    file) and the common options to set on each of its SAEs."""
    from saelab.sae.registry import get_architecture, make_config

    common = given(args, args.common_flags)
    arch_options, set_fields = given(args, args.arch_flags), _set_fields(args.set)
    twice = sorted((set(common) | set(arch_options)) & set(set_fields))
    if twice:
        name = twice[0]
        raise UserError(
            f"{name} is set twice, by --{name.replace('_', '-')} and by --set {name}=...; "
            "give it once"
        )
    flags = {**arch_options, **set_fields}
    if args.sweep:
        if args.arch or flags:
            raise UserError("give either --sweep or --arch with its options, not both")
        return [], common
    arch = args.arch or "topk"
    known = {f.name for f in dataclasses.fields(get_architecture(arch).config_class)}
    wrong = sorted(f for f in flags if f not in known)
    if wrong:
        raise UserError(
            f"--{wrong[0].replace('_', '-')} does not apply to a {arch!r} SAE; "
            f"its options: {', '.join(sorted(known))}"
        )
    return [make_config(arch, **common, seed=args.seed or 0, **flags)], {}


def _set_fields(pairs: list[str]) -> dict[str, Any]:
    """--set FIELD=VALUE pairs; VALUE is read as JSON when it parses, else kept as text."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set takes FIELD=VALUE, got {pair!r}")
        try:
            fields[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fields[name.strip()] = value
    return fields
