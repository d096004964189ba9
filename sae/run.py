"""`run_training(TrainRunConfig)`: the one entry point of training, behind `saelab train`,
`saelab.train` and the demo.

A run config names the SAEs (configs, or a TOML sweep file), the activation store and hook they
read, how many tokens, the batch and seed of the data order, the output folder, and the
trainer's settings (`TrainConfig`). The store's train split is read (its held-out tail is for
`saelab eval`), with as many epochs as the tokens need.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.sae.config import SAEConfig, TrainConfig


@dataclass
class TrainRunConfig:
    """One training run: which SAEs, on which store and hook, for how long, and where."""

    acts: str
    """The activation store (path or fsspec URL); its train split is read."""
    saes: list[SAEConfig] = field(default_factory=list)
    """The SAEs to train, every one on every batch (a sweep in one pass over the data)."""
    sweep: str | None = None
    """A TOML sweep file instead of `saes` (see sweeps/example.toml); its [train] table sets
    the hook and tokens where this config gives none, and `TrainConfig` fields over `train`'s."""
    hook: str | None = None
    """Hook in the store the SAEs read (default: the sweep file's [train] hook)."""
    hooks: list[str] | None = None
    """Layer groups: the same hook point of consecutive layers, in order (instead of `hook`),
    e.g. blocks.0.hook_resid_post,blocks.1.hook_resid_post,..."""
    layer_groups: int | None = None
    """Layer groups (Group-SAE): split `hooks` into this many contiguous groups of similar
    layers and train one SAE (or sweep) per group on the rows of all its layers, one subfolder
    per group; `tokens` then counts rows of every layer (default: each layer's train split
    once)."""
    group_tokens: int = 8192
    """Layer groups: tokens per layer on which the layers' angular similarity is measured."""
    layers: str | None = None
    """Per-layer transcoders in one pass: the layers, as `0-29` or `0,3,5`. `hook` and each
    transcoder's `target_hook` are then templates with `{layer}` (e.g.
    blocks.{layer}.ln2.hook_normalized -> blocks.{layer}.hook_mlp_out) and every transcoder is
    trained once per layer, all on the same batches (named `<name>-L<layer>`). A cross-layer
    transcoder (`clt`) is one dictionary over all these layers (its templates default to the
    MLP's normalised input and output)."""
    out: str | None = None
    """Output folder: the SAE checkpoint (one subfolder per SAE of a sweep) and the training
    state; None trains in memory only."""
    tokens: int | None = None
    """Training tokens; None: one pass over the store's train split (or the sweep file's)."""
    batch_size: int = 4096
    """Tokens per batch."""
    seed: int = 0
    """Seed of the data order, and of each SAE's initialisation that sets none."""
    seeds: list[int] | None = None
    """Train every SAE once per initialisation seed in the same pass (named `<name>-seed<s>`),
    for the stability eval; a sweep file may set `seeds` itself instead."""
    resume: bool = False
    """Continue the run saved in `out` (exactly where it stopped)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """SAE config fields set on every SAE (over a sweep file's values), e.g. {"d_sae": 4608}."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(tokens=1))
    """How to train (LR schedule, optimiser, logging, device, ...); its `tokens` and `hook`
    are set from this run config."""
    live: bool | None = None
    """Run the model on the store's token sequences while training and give every batch the LM
    loss gradient at the hook (a forward and backward pass per token; the hook must be in the
    store); None: exactly when an SAE needs the gradient (gsae)."""
    e2e: Any = None
    """An `E2EConfig` (`saelab.sae.e2e`): fine-tune the trained SAE it names end to end with the
    live model (KL, or KL plus downstream MSE) instead of training `saes` on activations."""

    def __post_init__(self) -> None:
        if isinstance(self.saes, SAEConfig):
            self.saes = [self.saes]
        check_fields(self)

    def validate(self) -> None:
        if self.e2e is not None:
            from saelab.sae.e2e import E2EConfig

            if not isinstance(self.e2e, E2EConfig):
                raise UserError(
                    f"`e2e` must be an E2EConfig (saelab.sae.e2e), got {type(self.e2e).__name__}"
                )
            if self.saes or self.sweep:
                raise UserError(
                    "an e2e run fine-tunes the SAE of its checkpoint folder (`e2e.sae`); give no "
                    "`saes` or `sweep` with it"
                )
            self.e2e.validate()
        elif bool(self.saes) == bool(self.sweep):
            raise UserError(
                "give the SAEs to train either as configs (`saes`) or as a sweep file "
                "(`sweep`), one of the two"
            )
        if self.tokens is not None and self.tokens < 1:
            raise UserError(f"`tokens` must be positive, got {self.tokens}")
        if self.batch_size < 1:
            raise UserError(
                f"`batch_size` must be a positive number of tokens, got {self.batch_size}"
            )
        for c in self.saes:
            c.validate()
        if (self.hooks is None) != (self.layer_groups is None):
            raise UserError(
                "layer groups need both `hooks` (consecutive layers) and `layer_groups` (how "
                "many groups; 1: one SAE for all), or neither"
            )
        if self.hooks is not None and self.hook is not None:
            raise UserError("give either `hook` (one SAE per hook) or `hooks` (layer groups)")
        if self.group_tokens < 1:
            raise UserError(f"`group_tokens` must be positive, got {self.group_tokens}")
        if self.layers is not None:
            parse_layers(self.layers)
            if self.hooks is not None:
                raise UserError(
                    "give either `layers` (per-layer transcoders) or `hooks` (layer groups)"
                )


def parse_layers(text: str) -> list[int]:
    """`0-29` or `0,3,5` (or a mix, `0-3,8`) as a sorted list of distinct layers."""
    layers: set[int] = set()
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise UserError(
                f"`layers` takes ranges and numbers like 0-29 or 0,3,5; got {text!r}"
            ) from None
        if first < 0 or last < first:
            raise UserError(f"`layers`: {part.strip()!r} is not a range of layers (like 0-29)")
        layers.update(range(first, last + 1))
    return sorted(layers)


def expand_layers(
    cfg: TrainRunConfig, configs: list[SAEConfig]
) -> tuple[list[SAEConfig], TrainRunConfig]:
    """Per-layer transcoders: each config once per layer of `cfg.layers`, its hooks the
    `{layer}` templates filled in; the run's hook becomes the first layer's input hook. A
    cross-layer transcoder (a config with `target_hooks`) stays one config over all the layers:
    its `input_hooks` and `target_hooks` are filled in instead (its input template is the run's
    `hook` when that is a template, else its own `input_hook`)."""
    assert cfg.layers is not None
    layers = parse_layers(cfg.layers)
    template = cfg.hook
    per_layer = [c for c in configs if not hasattr(c, "target_hooks")]
    if (template or per_layer) and (not template or "{layer}" not in template):
        raise UserError(
            "with `layers`, `hook` is a template with {layer}, e.g. "
            "--hook 'blocks.{layer}.ln2.hook_normalized'"
        )
    out: list[SAEConfig] = []
    for c in configs:
        if hasattr(c, "target_hooks"):
            out.append(_over_layers(c, layers, template))
            continue
        target = getattr(c, "target_hook", None)
        if not target or "{layer}" not in target:
            raise UserError(
                f"`layers` trains transcoders, one per layer: {c.resolved_name()!r} needs a "
                "target_hook template with {layer}, e.g. --target-hook 'blocks.{layer}.hook_mlp_out'"
            )
        source = getattr(c, "input_hook", None) or template
        for layer in layers:
            out.append(
                dataclasses.replace(
                    c,
                    name=f"{c.resolved_name()}-L{layer}",
                    input_hook=source.format(layer=layer),
                    target_hook=target.format(layer=layer),
                )
            )
    first = template.format(layer=layers[0]) if template else out[0].input_hooks[0]  # type: ignore[attr-defined]
    return out, dataclasses.replace(cfg, hook=first)


def _over_layers(c: SAEConfig, layers: list[int], template: str | None) -> SAEConfig:
    """A cross-layer transcoder's config with one input and one target hook per layer."""
    source = template or c.input_hook  # type: ignore[attr-defined]
    target = c.target_hook  # type: ignore[attr-defined]
    for name, value in (("input_hook", source), ("target_hook", target)):
        if "{layer}" not in value:
            raise UserError(
                f"`layers` fills in the {name} template of {c.resolved_name()!r}, which needs "
                f"{{layer}}; got {value!r}"
            )
    out = dataclasses.replace(
        c,
        input_hook=source,
        input_hooks=[source.format(layer=layer) for layer in layers],
        target_hooks=[target.format(layer=layer) for layer in layers],
    )
    out.validate()
    return out


def joint_hooks(hook: str, configs: list[SAEConfig]) -> list[str] | None:
    """The hooks a run with transcoders reads side by side (`hook` first), or None when every
    SAE reconstructs the run's one hook. A cross-layer transcoder reads every hook of its
    `input_hooks` and `target_hooks`."""
    if not any(getattr(c, "target_hook", None) for c in configs):
        return None
    hooks = [hook]
    for c in configs:
        if hasattr(c, "target_hooks"):
            wanted = [*(c.input_hooks or ()), *(c.target_hooks or ())]  # type: ignore[attr-defined]
        else:
            wanted = [getattr(c, "input_hook", None), getattr(c, "target_hook", None)]
        for h in wanted:
            if h and h not in hooks:
                hooks.append(h)
    return hooks


def resolve_sweep(cfg: TrainRunConfig) -> tuple[list[SAEConfig], TrainRunConfig]:
    """The SAE configs and the run config with the sweep file's [train] table applied: its
    hook and tokens where the run config gives none, its `TrainConfig` values over the run
    config's (as `saelab train` always did)."""
    from saelab.sae.sweep import apply_train_overrides, load_sweep, with_seeds

    if not cfg.sweep:
        return with_seeds([_override(c, cfg.overrides) for c in cfg.saes], cfg.seeds), cfg
    configs, table = load_sweep(cfg.sweep, seed=cfg.seed, seeds=cfg.seeds, overrides=cfg.overrides)
    table_hook, table_tokens = table.pop("hook", None), table.pop("tokens", None)
    hook = cfg.hook or (None if cfg.hooks else table_hook)  # layer groups read `hooks`
    tokens = cfg.tokens or table_tokens
    train = apply_train_overrides(cfg.train, table)  # the file's [train] values win
    return configs, dataclasses.replace(cfg, hook=hook, tokens=tokens, train=train)


def _override(config: SAEConfig, values: dict[str, Any]) -> SAEConfig:
    if not values:
        return config
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"`{unknown[0]}` is not a field of a {config.architecture!r} SAE; "
            f"its fields: {', '.join(sorted(known))}"
        )
    out = dataclasses.replace(config, **values)
    out.validate()
    return out


def training_loader(
    acts: str,
    hook: str | list[str],
    tokens: int | None,
    batch_size: int,
    seed: int,
    live: bool = False,
    joint: list[str] | None = None,
) -> Any:
    """The store's train split, with enough epochs for `tokens` (None: one pass). A list of
    hooks reads all of them as rows of one stream (a layer group); `live`: the live loader
    (activations from the model, with the LM loss gradient); `joint`: these hooks side by side
    in every row (transcoders: input and target of the same tokens; `hook` is ignored)."""
    from saelab.activations.loader import ActivationLoader, JointHookLoader, MultiHookLoader

    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        raise UserError(f"`tokens` must be a positive whole number or None, got {tokens!r}")
    make: Any = ActivationLoader
    if joint is not None:
        if live:
            raise UserError("transcoders read stored activations; drop `live`")
        make, hook = JointHookLoader, list(joint)
    elif isinstance(hook, list):
        if live:
            raise UserError("layer groups read stored activations; the live loader takes one hook")
        make = MultiHookLoader
    elif live:
        from saelab.activations.live import LiveGradientLoader

        make = LiveGradientLoader
    loader = make(acts, hook, batch_size=batch_size, seed=seed, split="train")
    if tokens and tokens > loader.tokens_per_epoch:
        epochs = math.ceil(tokens / loader.tokens_per_epoch)
        shared = {"model": loader.model} if live else {}  # load the model once
        loader = make(
            acts, hook, batch_size=batch_size, seed=seed, split="train", epochs=epochs, **shared
        )
    return loader


@dataclass
class TrainingResult:
    """What a run trained."""

    saes: dict[str, Any]
    """Each SAE by name (input scaling folded in, eval mode)."""
    tokens: int
    """Tokens trained on."""
    out: str | None
    """The output folder, if any."""
    is_main: bool = True
    """Whether this process is rank 0 of a data-parallel run (the one that saved)."""


def run_training(cfg: TrainRunConfig) -> TrainingResult:
    """Train the run's SAEs (data-parallel when launched by torchrun) and save them to `out`."""
    from saelab.sae.distributed import from_environment
    from saelab.sae.trainer import Trainer

    if not isinstance(cfg, TrainRunConfig):
        raise UserError(
            f"run_training takes a TrainRunConfig, got {type(cfg).__name__}; build one with "
            "TrainRunConfig(acts=..., saes=[...], out=...)"
        )
    cfg.validate()
    if cfg.e2e is not None:
        return _run_e2e(cfg)
    configs, cfg = resolve_sweep(cfg)
    if cfg.layer_groups is not None:
        if any(getattr(c, "target_hook", None) for c in configs):
            raise UserError("layer groups train SAEs; a transcoder reads its own hook pair")
        return run_layer_groups(cfg, configs)
    if cfg.layers is not None:
        configs, cfg = expand_layers(cfg, configs)
    for c in configs:
        if hasattr(c, "target_hooks") and not c.target_hooks:  # type: ignore[attr-defined]
            raise UserError(
                f"{c.resolved_name()!r} ({c.architecture}) spans several layers: give them with "
                "`layers` (saelab train --arch clt --layers 4-7)"
            )
    if not cfg.hook:
        raise UserError("which hook? give `hook` (or set hook in the sweep's [train] table)")
    live = _live(configs, cfg.live)
    joint = joint_hooks(cfg.hook, configs)
    loader = training_loader(
        cfg.acts, cfg.hook, cfg.tokens, cfg.batch_size, cfg.seed, live, joint=joint
    )
    record = {"acts": cfg.acts, "batch_size": cfg.batch_size, "seed": cfg.seed}
    train = dataclasses.replace(
        cfg.train,
        tokens=int(cfg.tokens or loader.tokens_per_epoch) or 1,
        hook=cfg.hook,
        extra={**record, **cfg.train.extra},
    )
    dist = from_environment(train.device)
    trainer = Trainer(
        configs, loader, train, out=cfg.out, resume=cfg.resume, dist=dist,
        meta={"store": cfg.acts}, one_pass=cfg.tokens is None,
    )  # fmt: skip
    saes = trainer.run()
    return TrainingResult(saes, trainer.tokens, cfg.out, dist.is_main)


def _live(configs: list[SAEConfig], requested: bool | None) -> bool:
    """Whether the run reads the live loader: as requested, else when an SAE needs gradients."""
    from saelab.sae.registry import get_architecture

    needs = [
        c for c in configs if getattr(get_architecture(c.architecture), "needs_lm_grad", False)
    ]
    if needs and requested is False:
        raise UserError(
            f"SAE {needs[0].resolved_name()!r} ({needs[0].architecture}) selects with the LM loss "
            "gradient at its hook, which only the live loader gives; drop `live`=False"
        )
    return bool(needs) if requested is None else requested


def _run_e2e(cfg: TrainRunConfig) -> TrainingResult:
    """End-to-end fine-tuning of one trained SAE (`saelab.sae.e2e`)."""
    from saelab.sae.e2e import E2ETrainer

    trainer = E2ETrainer(
        cfg.e2e, cfg.acts, cfg.train, cfg.out, tokens=cfg.tokens, batch_size=cfg.batch_size,
        seed=cfg.seed, resume=cfg.resume, hook=cfg.hook,
    )  # fmt: skip
    sae = trainer.run()
    return TrainingResult({trainer.name: sae}, trainer.tokens, cfg.out)


def run_layer_groups(cfg: TrainRunConfig, configs: list[SAEConfig]) -> TrainingResult:
    """Group `cfg.hooks` into `cfg.layer_groups` contiguous groups of similar layers and train
    the SAEs once per group, on the rows of all its layers (see saelab.sae.layer_group_run)."""
    from saelab.activations.store import refuse_inside_store
    from saelab.sae.checkpoint import write_json
    from saelab.sae.distributed import from_environment
    from saelab.sae.layer_group_run import (
        GROUPS_FILE,
        check_output,
        group_folder_name,
        grouping_for,
        has_state,
    )
    from saelab.sae.trainer import Trainer

    assert cfg.hooks is not None and cfg.layer_groups is not None
    out = Path(cfg.out) if cfg.out is not None else None
    if out is not None:
        refuse_inside_store(str(out), "the SAE output folder")
        check_output(out, cfg.resume)
    grouping = grouping_for(cfg, out)
    dist = from_environment(cfg.train.device)
    if out is not None and dist.is_main and not cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / GROUPS_FILE, grouping.to_dict())
    saes: dict[str, Any] = {}
    tokens = 0
    for index, hooks in enumerate(grouping.groups):
        name = group_folder_name(hooks)
        folder = None if out is None else out / name
        loader = training_loader(cfg.acts, hooks, cfg.tokens, cfg.batch_size, cfg.seed)
        train = dataclasses.replace(
            cfg.train,
            tokens=int(cfg.tokens or loader.tokens_per_epoch) or 1,
            hook=hooks[0],
            extra={"acts": cfg.acts, "batch_size": cfg.batch_size, "seed": cfg.seed,
                   **cfg.train.extra},
        )  # fmt: skip
        meta = {
            "store": cfg.acts,
            "layer_group": {"hooks": hooks, "index": index, "n_groups": len(grouping.groups)},
        }
        resume = cfg.resume and folder is not None and has_state(folder)
        trainer = Trainer(
            [dataclasses.replace(c) for c in configs], loader, train, out=folder, resume=resume,
            dist=dist, meta=meta, one_pass=cfg.tokens is None,
        )  # fmt: skip
        trained = trainer.run()
        flat = len(trained) == 1
        saes.update({name if flat else f"{name}/{k}": v for k, v in trained.items()})
        tokens += trainer.tokens
    return TrainingResult(saes, tokens, cfg.out, dist.is_main)
