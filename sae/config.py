"""Configs shared by every architecture (`SAEConfig`) and by the trainer (`TrainConfig`).

Each architecture subclasses `SAEConfig` in its own module and adds its own fields. Where the
field disagrees on a convention (say, whether the L1 penalty is weighted by decoder norms), the
choice is a field here, so it is recorded in every checkpoint's resolved config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from saelab.base.config import check_device, check_fields
from saelab.base.errors import UserError


@dataclass
class SAEConfig:
    """Fields every SAE has; architectures add theirs in a subclass."""

    architecture: ClassVar[str] = ""

    d_sae: int = 4096
    """Number of latents (dictionary size)."""
    d_in: int | None = None
    """Input width; None takes it from the activation loader (the store's hook width)."""
    name: str | None = None
    """Name of this SAE in a sweep (its subfolder); None derives one from the config."""
    lr: float | None = None
    """Learning rate; None uses lr_base / sqrt(d_sae / 2**14) (the OpenAI TopK scaling)."""
    lr_base: float = 2e-4
    """The learning rate of the default rule at d_sae 2**14 (used when lr is None): 2e-4, the
    OpenAI TopK value, for the threshold architectures; the TopK family sets its own."""
    lr_min_width: int = 1
    """The default rule uses max(d_sae, lr_min_width) for d_sae, so narrow SAEs do not get an
    ever larger LR (1: no floor, the threshold architectures; the TopK family sets its own)."""
    seed: int = 0
    """Seed of the weight initialisation."""
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from the input before encoding (the "pre-bias")."""
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm: remove the gradient parallel to each row before the
    step and renormalise after it."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """How b_dec starts: "geometric_median" or "mean" of the first sample, or "zeros"."""
    init_encoder_scale: bool = True
    """After b_dec, scale the encoder (the decoder transpose) by the least-squares factor
    that gives the first sample's reconstruction the right size; without it a fresh ReLU,
    JumpReLU or Gated SAE, with half its latents active, overshoots the input several-fold."""
    dtype: str = "float32"
    """Parameter (master weight) dtype; keep float32 (bf16 autocast is a trainer option)."""
    active_subspace_dim: int | None = None
    """Active subspace initialisation (Wang et al. 2025; `sae/subspace_init.py`): start each
    decoder row, and its encoder transpose, as a random direction in the span of the top
    active_subspace_dim principal directions of the first sample (mean removed), where
    low-rank activations such as attention outputs live; fewer latents die. None: random
    directions of the whole space. The paper's guide: the dimensions holding 99% of the
    variance (about half of d_in for attention outputs)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def resolved_lr(self) -> float:
        """The learning rate actually used."""
        if self.lr is not None:
            return self.lr
        return self.lr_base / math.sqrt(max(self.d_sae, self.lr_min_width) / 2**14)

    def default_name(self) -> str:
        """A readable, unique-enough name built from the distinguishing fields."""
        return f"{self.architecture}-{self.d_sae}"

    def resolved_name(self) -> str:
        return self.name or self.default_name()

    def validate(self) -> None:
        """Raise UserError for impossible settings (called before training or building)."""
        if self.d_sae < 1:
            raise UserError(f"d_sae must be positive, got {self.d_sae}")
        if self.d_in is not None and self.d_in < 1:
            raise UserError(f"d_in must be positive, got {self.d_in}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise UserError(
                f"b_dec_init must be geometric_median, mean or zeros, got {self.b_dec_init!r}"
            )
        if self.active_subspace_dim is not None and not (
            1 <= self.active_subspace_dim <= (self.d_in or self.active_subspace_dim)
        ):
            raise UserError(
                f"active_subspace_dim must be between 1 and d_in ({self.d_in}), got "
                f"{self.active_subspace_dim}"
            )
        if self.dtype != "float32":
            raise UserError("SAE parameters are kept in float32; use bf16 autocast instead")
        check_numbers(self, f"the {self.architecture or 'SAE'} config")
        if self.lr_min_width < 1:
            raise UserError(f"lr_min_width must be at least 1, got {self.lr_min_width}")
        if not self.lr_base > 0:
            raise UserError(f"lr_base must be positive, got {self.lr_base}")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"the learning rate must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["architecture"] = self.architecture
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        data = {k: v for k, v in data.items() if k != "architecture"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown option(s) {', '.join(unknown)} for a {cls.architecture!r} SAE; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)


def check_numbers(cfg: Any, where: str) -> None:
    """Refuse NaN or infinite values in a config's float fields (and in float lists)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"{f.name} must be a finite number in {where}, got {v}")


@dataclass
class ThresholdSAEConfig(SAEConfig):
    """Fields of the architectures whose sparsity comes from a threshold (ReLU, JumpReLU,
    Gated) rather than from a count (the TopK family)."""

    init_l0: float | None = None
    """Start sparse: set each latent's threshold (ReLU: b_enc, Gated: b_gate, JumpReLU: θ)
    from the first sample so that it fires on init_l0 / d_sae of the tokens, about init_l0
    active latents per token from the first step. None keeps the reference start, where about
    half the latents fire and the first steps run dense (several times slower) until the
    sparsity penalty has bitten."""

    target_l0: float | None = None
    """Target-L0 mode: a controller scales the sparsity coefficient after every step (by
    exp(target_l0_gain · log(L0 / target_l0))) so that L0 settles at target_l0; the configured
    coefficient is then only the starting value and the sparsity warm-up is off. None keeps
    the coefficient fixed. The scale reached is in the training state and the metrics."""
    target_l0_gain: float = 0.05
    """Step size of the target-L0 controller in log space (per step, per unit of log-ratio)."""

    def sparsity_target(self) -> float | None:
        """The L0 the trainer's controller steers to (None: a fixed coefficient)."""
        return self.target_l0

    def target_suffix(self) -> str:
        return "" if self.target_l0 is None else f"-l0target_{self.target_l0:g}"

    def validate(self) -> None:
        super().validate()
        if self.target_l0 is not None and not 0 < self.target_l0 < self.d_sae:
            raise UserError(
                f"target_l0 must be between 0 and d_sae ({self.d_sae}), got {self.target_l0}"
            )
        if not 0 < self.target_l0_gain <= 1:
            raise UserError(f"target_l0_gain must be in (0, 1], got {self.target_l0_gain}")
        if self.init_l0 is not None and not 0 < self.init_l0 < self.d_sae:
            raise UserError(
                f"init_l0 must be between 0 and d_sae ({self.d_sae}), got {self.init_l0}"
            )


@dataclass
class TrainConfig:
    """How to train (shared by every SAE of a sweep)."""

    tokens: int = 10_000_000
    """Training tokens; the LR and coefficient schedules are laid out over them."""
    hook: str | None = None
    """Hook the SAEs read; checked against the loader's hook when both are known."""
    lr_warmup_steps: int | None = None
    """Linear LR warm-up steps; None uses min(1000, lr_warmup_fraction of the steps)."""
    lr_warmup_fraction: float = 0.25
    """Fraction of the run the LR warms up over when lr_warmup_steps is None (at most 1000
    steps). A quarter: at the TopK family's LR a short run with 5% (no warm-up at all below
    20 steps) ends several points of FVU worse (docs/architecture.md, training defaults)."""
    lr_decay_fraction: float = 0.2
    """Fraction of the run at the end over which the LR decays linearly to 0."""
    sparsity_warmup_fraction: float = 0.05
    """Fraction of the run over which sparsity coefficients warm up linearly from 0."""
    optimizer: Literal["adam", "schedule_free_adam"] = "adam"
    """"adam" (torch's fused Adam) or "schedule_free_adam" (schedule-free AdamW from the
    `schedulefree` package: it trains at an extrapolated point and evaluates, saves and folds
    the running average of its iterates; pair it with lr_decay_fraction 0)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    dead_window_tokens: int | None = None
    """Tokens without firing after which a latent counts as dead (for AuxK and the metric);
    None uses min(10M, tokens // 10), the 10M-token window scaled down for small runs."""
    init_tokens: int = 16384
    """Tokens of the first sample used for the input scale and the b_dec initialisation."""
    normalize_inputs: bool = True
    """Scale inputs to unit mean squared norm during training (folded into the saved weights)."""
    save_every_tokens: int | None = None
    """Write checkpoints and training state every this many tokens (None: only at the end)."""
    log_every: int = 10
    """Steps between metric rows in metrics.jsonl (and progress-bar updates)."""
    max_loss: float = 1e3
    """Loss above which a run counts as exploding (the trivial x_hat = 0 gives about 1 on
    normalised inputs); a NaN or infinite loss always stops the run."""
    device: str = "cpu"
    """Torch device."""
    keep_freed_cpu_memory: bool = True
    """On a CPU device under glibc, keep freed memory in the process for reuse instead of
    handing big blocks back to the OS, so each step's fresh buffers skip their page faults
    (~15-20% of a TopK step at d_sae 18432); the process then keeps its peak memory (see
    `sae/memory.py`)."""
    autocast_bf16: bool = False
    """bf16 autocast of the forward pass on CUDA, with float32 master weights."""
    progress: bool = True
    """Show a tqdm progress bar."""
    wandb: bool = False
    """Log metrics to Weights & Biases (imported only when true)."""
    wandb_project: str = "saelab"
    """W&B project name."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata recorded with the run (model, dataset, store path...)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        check_numbers(self, "the training config")
        if self.tokens < 1:
            raise UserError(f"tokens must be positive, got {self.tokens}")
        if self.optimizer not in ("adam", "schedule_free_adam"):
            raise UserError(f"optimizer must be adam or schedule_free_adam, got {self.optimizer!r}")
        if not 0 <= self.lr_warmup_fraction <= 1:
            raise UserError("lr_warmup_fraction must be between 0 and 1")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise UserError("lr_decay_fraction must be between 0 and 1")
        if not 0 <= self.sparsity_warmup_fraction <= 1:
            raise UserError("sparsity_warmup_fraction must be between 0 and 1")
        if self.save_every_tokens is not None and self.save_every_tokens < 1:
            raise UserError("save_every_tokens must be positive")
        if self.log_every < 1:
            raise UserError("log_every must be at least 1")
        beta1, beta2 = self.adam_betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise UserError(f"adam_betas must both lie in [0, 1), got {self.adam_betas}")
        if not self.adam_eps > 0:
            raise UserError(f"adam_eps must be positive, got {self.adam_eps}")
        if self.init_tokens < 1:
            raise UserError(f"init_tokens must be at least 1, got {self.init_tokens}")
        if self.dead_window_tokens is not None and self.dead_window_tokens < 1:
            raise UserError(
                f"dead_window_tokens must be at least 1 (or unset), got {self.dead_window_tokens}"
            )
        if self.lr_warmup_steps is not None and self.lr_warmup_steps < 0:
            raise UserError(f"lr_warmup_steps must be >= 0 (or unset), got {self.lr_warmup_steps}")
        if not self.max_loss > 0:
            raise UserError(f"max_loss must be positive, got {self.max_loss}")
        check_device(self.device)
        if self.autocast_bf16 and not self.device.startswith("cuda"):
            raise UserError(
                "autocast_bf16 runs the forward pass in bf16 on CUDA only; drop it or use a CUDA "
                "device"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
