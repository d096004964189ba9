"""`saelab train`: train one SAE, or a sweep of them in one pass, on a harvested store."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from saelab.commands.numbers import count
from saelab_base.errors import UserError

# Convenience flags for config fields that only some architectures have; any field of any
# registered architecture (built-in or added with sae.registry.register_architecture) can also
# be set with --set FIELD=VALUE.
ARCH_FLAGS = (
    "k",
    "l1_coefficient",
    "l0_coefficient",
    "bandwidth",
    "aux_k",
    "prefix_sizes",
    "init_l0",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an SAE (or a sweep of SAEs in one pass) on an activation store",
        description="Train SAEs on one hook of a store. Give --arch and its options for one "
        "SAE, or --sweep FILE.toml for many variants trained on every batch.",
    )
    p.add_argument("--acts", required=True, help="activation store (path or fsspec URL)")
    p.add_argument("--hook", help="hook name in the store (or [train] hook in the sweep file)")
    p.add_argument(
        "--arch",
        help="architecture of a single SAE (default topk): relu, topk, batchtopk, jumprelu, "
        "gated, matryoshka, or any registered with sae.registry.register_architecture",
    )
    p.add_argument("--sweep", help="TOML file with [[sae]] entries (see sweeps/example.toml)")
    p.add_argument("--d-sae", type=count, help="number of latents (default 4096)")
    p.add_argument("--k", type=float, help="active latents per token (topk, batchtopk, matryoshka)")
    p.add_argument("--l1-coefficient", type=float, help="L1 coefficient (relu, gated)")
    p.add_argument("--l0-coefficient", type=float, help="L0 coefficient (jumprelu)")
    p.add_argument("--bandwidth", type=float, help="JumpReLU kernel bandwidth")
    p.add_argument(
        "--init-l0",
        type=float,
        help="start sparse at about this L0 (relu, jumprelu, gated; default: the dense start)",
    )
    p.add_argument("--aux-k", type=int, help="AuxK dead latents (TopK family; default d_in/2)")
    p.add_argument(
        "--prefix-sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        help="Matryoshka prefix sizes, comma-separated",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any config field of the architecture (JSON value, e.g. --set k=32); repeatable",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="learning rate (default lr_base/sqrt(d_sae/2^14); lr_base 3.2e-3 for the TopK family, 2e-4 otherwise)",
    )
    p.add_argument(
        "--tokens", type=count, help="training tokens (default: one pass over the store)"
    )
    p.add_argument("--batch-size", type=count, default=4096, help="tokens per batch (default 4096)")
    p.add_argument("--out", required=True, help="output folder (one subfolder per SAE of a sweep)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and initialisation")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--save-every", type=count, metavar="TOKENS", help="checkpoint every N tokens")
    p.add_argument("--log-every", type=int, default=10, help="steps between metric rows")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (fp32 weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.config import TrainConfig
    from sae.distributed import from_environment
    from sae.sweep import apply_train_overrides, load_sweep
    from sae.trainer import Trainer

    configs, overrides = _sae_configs(args, load_sweep)
    hook = args.hook or overrides.get("hook")
    if not hook:
        raise UserError("which hook? pass --hook NAME (or set hook in the sweep's [train] table)")
    tokens = args.tokens or overrides.get("tokens")
    loader = _make_loader(args.acts, hook, args.batch_size, args.seed, tokens)
    tokens = tokens or loader.tokens_per_epoch
    cfg = TrainConfig(
        tokens=int(tokens or 0) or 1,
        hook=hook,
        save_every_tokens=args.save_every,
        log_every=args.log_every,
        device=args.device,
        autocast_bf16=args.bf16,
        progress=not args.no_progress,
        wandb=args.wandb,
        extra={"acts": args.acts, "batch_size": args.batch_size, "seed": args.seed},
    )
    cfg = apply_train_overrides(
        cfg, {k: v for k, v in overrides.items() if k not in ("hook", "tokens")}
    )
    dist = from_environment(args.device)
    trainer = Trainer(
        configs,
        loader,
        cfg,
        out=args.out,
        resume=args.resume,
        dist=dist,
        meta={"store": args.acts},
    )
    trainer.run()
    if dist.is_main:
        names = ", ".join(m.name for m in trainer.members)
        print(
            f"saelab train: {trainer.tokens:,} tokens, {len(trainer.members)} SAE(s) ({names}) -> {args.out}"
        )
    return 0


def _sae_configs(args: argparse.Namespace, load_sweep: Any) -> tuple[list, dict[str, Any]]:
    from sae.registry import make_config

    flags = {f: getattr(args, f) for f in ARCH_FLAGS if getattr(args, f) is not None}
    flags.update(_set_fields(args.set))
    common = {"d_sae": args.d_sae, "lr": args.lr}
    if args.sweep:
        if args.arch or flags:
            raise UserError("give either --sweep or --arch with its options, not both")
        configs, overrides = load_sweep(args.sweep)
        for c in configs:
            for field, value in common.items():
                if value is not None:
                    setattr(c, field, value)
            c.seed = c.seed or args.seed
        return configs, overrides
    arch = args.arch or "topk"
    fields = {k: v for k, v in common.items() if v is not None}
    fields["seed"] = args.seed
    known = {f.name for f in dataclasses.fields(_config_class(arch))}
    wrong = sorted(f for f in flags if f not in known)
    if wrong:
        raise UserError(
            f"--{wrong[0].replace('_', '-')} does not apply to a {arch!r} SAE; "
            f"its options: {', '.join(sorted(known))}"
        )
    if "k" in flags and arch == "topk" and float(flags["k"]).is_integer():
        flags["k"] = int(flags["k"])
    return [make_config(arch, **fields, **flags)], {}


def _set_fields(pairs: list[str]) -> dict[str, Any]:
    """--set FIELD=VALUE pairs; VALUE is read as JSON when it parses, else kept as text."""
    import json

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


def _config_class(arch: str) -> type:
    from sae.registry import get_architecture

    return get_architecture(arch).config_class


def _make_loader(store: str, hook: str, batch_size: int, seed: int, tokens: int | None) -> Any:
    """The store's train split (the held-out tail is for `saelab eval`), with enough epochs."""
    import math

    from activations.loader import ActivationLoader

    loader = ActivationLoader(store, hook=hook, batch_size=batch_size, seed=seed, split="train")
    if tokens and tokens > loader.tokens_per_epoch:
        epochs = math.ceil(tokens / loader.tokens_per_epoch)
        loader = ActivationLoader(
            store, hook=hook, batch_size=batch_size, seed=seed, split="train", epochs=epochs
        )
    return loader
