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
    out: str | None = None
    """Output folder: the SAE checkpoint (one subfolder per SAE of a sweep) and the training
    state; None trains in memory only."""
    tokens: int | None = None
    """Training tokens; None: one pass over the store's train split (or the sweep file's)."""
    batch_size: int = 4096
    """Tokens per batch."""
    seed: int = 0
    """Seed of the data order, and of each SAE's initialisation that sets none."""
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


def resolve_sweep(cfg: TrainRunConfig) -> tuple[list[SAEConfig], TrainRunConfig]:
    """The SAE configs and the run config with the sweep file's [train] table applied: its
    hook and tokens where the run config gives none, its `TrainConfig` values over the run
    config's (as `saelab train` always did)."""
    if not cfg.sweep:
        return [_override(c, cfg.overrides) for c in cfg.saes], cfg
    from saelab.sae.sweep import apply_train_overrides, load_sweep

    configs, table = load_sweep(cfg.sweep)
    configs = [_override(c, cfg.overrides) for c in configs]
    for c in configs:
        c.seed = c.seed or cfg.seed
    table_hook, table_tokens = table.pop("hook", None), table.pop("tokens", None)
    hook, tokens = cfg.hook or table_hook, cfg.tokens or table_tokens
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
    acts: str, hook: str, tokens: int | None, batch_size: int, seed: int, live: bool = False
) -> Any:
    """The store's train split, with enough epochs for `tokens` (None: one pass); `live`: the
    live loader (activations from the model, with the LM loss gradient)."""
    from saelab.activations.loader import ActivationLoader

    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        raise UserError(f"`tokens` must be a positive whole number or None, got {tokens!r}")
    make: Any = ActivationLoader
    if live:
        from saelab.activations.live import LiveGradientLoader

        make = LiveGradientLoader
    loader = make(acts, hook=hook, batch_size=batch_size, seed=seed, split="train")
    if tokens and tokens > loader.tokens_per_epoch:
        epochs = math.ceil(tokens / loader.tokens_per_epoch)
        shared = {"model": loader.model} if live else {}  # load the model once
        loader = make(
            acts, hook=hook, batch_size=batch_size, seed=seed, split="train", epochs=epochs,
            **shared,
        )  # fmt: skip
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
    if not cfg.hook:
        raise UserError("which hook? give `hook` (or set hook in the sweep's [train] table)")
    live = _live(configs, cfg.live)
    loader = training_loader(cfg.acts, cfg.hook, cfg.tokens, cfg.batch_size, cfg.seed, live)
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
