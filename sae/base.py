"""The base class every architecture shares: parameters, encode/decode, decoder hygiene.

Layout: the encoder is stored as `encoder_weight [d_sae, d_in]` (each latent's row
contiguous, as the sparse kernels want) and exposed as `W_enc [d_in, d_sae]`, the
transpose view; checkpoints hold `W_enc [d_in, d_sae]` like SAELens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saelab.sae import ops
from saelab.sae.config import SAEConfig
from saelab.sae.init import firing_thresholds


@dataclass
class Code:
    """Sparse latent activations: `vals[n, j]` is latent `idx[n, j]` of row n (0 = inactive)."""

    idx: Tensor
    vals: Tensor
    d_sae: int
    shared: object | None = None
    """`ops.shared_segments(idx, d_sae)` when the encoder's gather already holds it, so the
    decode's backward reuses its sort (None: the decode sorts for itself)."""

    def l0(self) -> Tensor:
        """Active latents per row, float [N]."""
        return (self.vals != 0).sum(-1).float()

    def fire_counts(self) -> Tensor:
        """How many rows each latent fired on, float [d_sae]."""
        active = self.vals.detach() != 0
        counts = torch.zeros(self.d_sae, device=self.vals.device)
        return counts.index_add_(
            0, self.idx[active], torch.ones_like(self.idx[active], dtype=counts.dtype)
        )

    def to_dense(self) -> Tensor:
        dense = self.vals.new_zeros(self.vals.shape[0], self.d_sae)
        return dense.scatter_add(1, self.idx, self.vals)


@dataclass
class StepContext:
    """What the trainer tells an SAE about the current step."""

    sparsity_scale: float = 1.0
    """Warm-up multiplier of the sparsity coefficient (0 to 1)."""
    dead_mask: Tensor | None = None
    """Bool [d_sae]: latents that have not fired for the dead window (for AuxK)."""
    grad: Tensor | None = None
    """`[batch, d_in]`: ∂(LM loss)/∂x of each row, in the units of the (normalised) inputs, when
    the source gives it (the live loader; g-SAE selects with it); None otherwise."""
    target: Tensor | None = None
    """`[batch, d_out]`: what a transcoder reconstructs for each row (its target hook's
    activations, in training units); None for an SAE, which reconstructs its input."""


@dataclass
class TrainOutput:
    """One training forward pass: the loss to backpropagate and its named terms."""

    loss: Tensor
    terms: dict[str, Tensor]
    code: Code
    x_hat: Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class SAE(nn.Module):
    """Common parameters and behaviour; subclasses define selection and loss."""

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    saelens_architecture: ClassVar[str] = "standard"
    """The SAELens inference class this architecture is saved as."""

    def __init__(self, cfg: SAEConfig, d_in: int | None = None) -> None:
        super().__init__()
        d_in = d_in if d_in is not None else cfg.d_in
        if d_in is None:
            raise ValueError("d_in is unknown: set cfg.d_in or pass d_in")
        cfg.d_in = d_in
        cfg.validate()
        self.cfg = cfg
        self.d_in, self.d_sae = d_in, cfg.d_sae
        g = torch.Generator().manual_seed(cfg.seed)
        w_dec = torch.randn(cfg.d_sae, d_in, generator=g)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.encoder_weight = nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # -- layout -------------------------------------------------------------------------

    @property
    def W_enc(self) -> Tensor:
        """Encoder `[d_in, d_sae]` (a transpose view of `encoder_weight`)."""
        return self.encoder_weight.t()

    def center(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    @property
    def input_shift(self) -> Tensor | None:
        """What `center` subtracts (b_dec, or None): `ops.gather(x, ..., shift=...)`."""
        return self.b_dec if self.cfg.apply_b_dec_to_input else None

    # -- inference API ------------------------------------------------------------------

    def encode_sparse(self, x: Tensor) -> Code:
        """Inference encoding of `[N, d_in]` rows as a sparse `Code`."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Dense latent activations `[..., d_sae]`."""
        lead = x.shape[:-1]
        return self.encode_sparse(x.reshape(-1, self.d_in)).to_dense().reshape(*lead, self.d_sae)

    def encode_at(self, x: Tensor, idx: Tensor) -> Tensor:
        """Values `[N, k]` of the latents `idx` on rows `[N, d_in]` with the selection held
        fixed (what circuits call a frozen selection): the ReLU of each latent's
        pre-activation, with no top-k or threshold deciding anything, so a JumpReLU latent
        stays on below its threshold. At the rows it was selected on this equals
        `encode_sparse`, and so does its gradient."""
        return ops.gather(x, self.W_enc, self.b_enc, idx, shift=self.input_shift).relu()

    def decode_sparse(self, code: Code) -> Tensor:
        return ops.decode(code.idx, code.vals, self.W_dec, self.b_dec, code.shared)

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction from dense latents `[..., d_sae]`."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_in)
        return self.decode_sparse(self.encode_sparse(flat)).reshape(*lead, self.d_in)

    # -- training -----------------------------------------------------------------------

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        """Loss on a batch of (normalised) inputs; `terms` names every summand."""
        raise NotImplementedError

    @staticmethod
    def mse(x_hat: Tensor, x: Tensor) -> Tensor:
        """Per-token squared error summed over d_in, mean over tokens."""
        return (x_hat.float() - x.float()).pow(2).sum(-1).mean()

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove the gradient component parallel to each unit-norm decoder row."""
        if self.cfg.unit_norm_decoder and self.W_dec.grad is not None:
            ops.project_out_rows_(self.W_dec.grad, self.W_dec)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.cfg.unit_norm_decoder:
            ops.normalize_rows_(self.W_dec, 1e-12)

    @torch.no_grad()
    def init_encoder_scale_(self, x: Tensor) -> float:
        """Scale the encoder so the reconstruction of `x` best matches it (least squares)."""
        centred = self.decode_sparse(self.encode_sparse(x)) - self.b_dec
        target = x - self.b_dec
        denom = centred.pow(2).sum()
        if not torch.isfinite(denom) or denom <= 0:
            return 1.0
        c = float(((target * centred).sum() / denom).clamp(1e-3, 1e3))
        self.scale_encoder_(c)
        return c

    @torch.no_grad()
    def init_sparsity_(self, x: Tensor) -> None:
        """Apply the config's `init_l0` (threshold architectures) on a sample of inputs."""
        l0 = getattr(self.cfg, "init_l0", None)
        if l0 is None:
            return
        pre = ops.preacts(self.center(x), self.W_enc, self.b_enc)
        self.set_firing_thresholds_(firing_thresholds(pre, l0))

    def set_firing_thresholds_(self, t: Tensor) -> None:
        """Make latent i fire only where its pre-activation exceeds `t[i]` (or its current
        threshold, if higher)."""
        raise NotImplementedError(f"a {self.architecture} SAE has no threshold to set")

    @torch.no_grad()
    def scale_encoder_(self, c: float) -> None:
        """Multiply every latent's activation by c (encoder rows and biases)."""
        self.encoder_weight.mul_(c)
        self.b_enc.mul_(c)

    def after_step_update(self, out: TrainOutput) -> None:
        """Hook for running estimates kept outside the optimiser (BatchTopK threshold)."""

    @torch.no_grad()
    def calibrate_inference(self, sample: Tensor) -> None:
        """Fit what inference uses but training only tracks on the way (BatchTopK's global
        threshold) to the current weights, on `sample`, a recent batch in training units.
        The trainer calls it before it saves or hands out the SAE; training never reads
        what it sets. No-op by default."""

    # -- checkpoint layout ----------------------------------------------------------------

    def checkpoint_tensors(self, scale: float = 1.0) -> dict[str, Tensor]:
        """SAELens-layout tensors with the input scale folded in (works on raw inputs).

        Training saw `x * scale`; with W_enc * scale, W_dec / scale and b_dec / scale the
        latents on raw x equal the trained ones and the output is in raw units (SAELens's
        `fold_activation_norm_scaling_factor` convention).
        """
        with torch.no_grad():
            return {
                "W_enc": (self.W_enc * scale).contiguous().clone(),
                "b_enc": self.b_enc.detach().clone(),
                "W_dec": (self.W_dec / scale).contiguous().clone(),
                "b_dec": (self.b_dec / scale).clone(),
            }

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of `checkpoint_tensors` at scale 1 (weights used as they are)."""
        self.encoder_weight.copy_(tensors["W_enc"].t())
        self.b_enc.copy_(tensors["b_enc"])
        self.W_dec.copy_(tensors["W_dec"])
        self.b_dec.copy_(tensors["b_dec"])

    def saelens_config(self) -> dict[str, Any]:
        """Architecture-specific fields of SAELens's cfg.json."""
        return {}
