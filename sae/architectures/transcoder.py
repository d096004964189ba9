"""Transcoders: a TopK dictionary that reads one hook and reconstructs another.

A transcoder maps an MLP's (normalised) input `x [.., d_in]` to that MLP's output
`y [.., d_out]` through sparse latents: `y_hat = TopK(ReLU(x W_enc + b_enc)) W_dec + b_dec`,
plus `x W_skip` for a skip transcoder. It is a `TopKSAE` whose decoder writes to another
space: the fused top-k selection, the sparse kernels and AuxK (which reconstructs the
target's residual `y - y_hat` from the dead latents) are the TopK family's. There is no
pre-bias: `b_dec` lives in the target space, so it is never subtracted from the input.

The trainer hands the target through `StepContext.target`; the training loss is the MSE of
the target (summed over d_out, mean over tokens) plus the AuxK term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.topk import TopKConfig, TopKSAE
from saelab.sae.base import StepContext, TrainOutput


@dataclass
class TranscoderConfig(TopKConfig):
    """A TopK transcoder: latents read the input hook and write the target hook."""

    architecture = "transcoder"

    target_hook: str = ""
    """The hook the transcoder reconstructs (e.g. blocks.L.hook_mlp_out)."""
    input_hook: str | None = None
    """The hook it reads (e.g. blocks.L.ln2.hook_normalized); None takes the loader's hook
    when training starts (a saved transcoder always records it)."""
    d_out: int | None = None
    """Width of the target; None takes it from the store when training starts."""
    skip: bool = False
    """Add a linear skip connection `x W_skip [d_in, d_out]` (a skip transcoder)."""
    apply_b_dec_to_input: bool = False
    """Always False: b_dec is in the target space and cannot be subtracted from the input."""
    centre_init: bool = True
    """Start b_enc at -mean(x) W_enc on the first sample, so the first pre-activations are
    those of the centred input (what an SAE's pre-bias gives at its start). Without it the
    input's mean direction favours the same latents for every token: at layer 15 of
    smollm2-135m (d_sae 2304, k 32, 160k tokens) 58% of the latents ended dead, with it 51%."""

    def default_name(self) -> str:
        kind = "skip-transcoder" if self.skip else "transcoder"
        return f"{kind}-{self.d_sae}-k{self.k:g}"

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.target_hook, str) or not self.target_hook:
            raise UserError(
                "a transcoder needs the hook it reconstructs: set target_hook "
                "(saelab train --target-hook blocks.L.hook_mlp_out)"
            )
        if self.apply_b_dec_to_input:
            raise UserError(
                "apply_b_dec_to_input must be False for a transcoder (b_dec is in the target "
                "space); drop the option"
            )
        if self.d_out is not None and self.d_out < 1:
            raise UserError(f"d_out must be positive, got {self.d_out}")

    def resolved_aux_k(self) -> int:
        width = self.d_out if self.d_out is not None else self.d_in
        return self.aux_k if self.aux_k is not None else max(1, (width or 2) // 2)


class Transcoder(TopKSAE):
    """TopK transcoder (optionally with a skip connection); see the module docstring."""

    architecture = "transcoder"
    config_class = TranscoderConfig
    saelens_architecture = "transcoder"
    cfg: TranscoderConfig

    def __init__(self, cfg: TranscoderConfig, d_in: int | None = None) -> None:
        if cfg.d_out is None:
            raise ValueError("d_out is unknown: set cfg.d_out (the target hook's width)")
        super().__init__(cfg, d_in)
        self.d_out = int(cfg.d_out)
        # Input and target spaces differ: the tied start of an SAE (encoder = decoder^T)
        # means nothing here, so both get their own random unit-norm rows.
        g = torch.Generator().manual_seed(cfg.seed)
        w_dec = torch.randn(cfg.d_sae, self.d_out, generator=g)
        w_enc = torch.randn(cfg.d_sae, self.d_in, generator=g)
        self.W_dec = nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True))
        self.encoder_weight = nn.Parameter(w_enc / w_enc.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        self.W_skip = nn.Parameter(torch.zeros(self.d_in, self.d_out)) if cfg.skip else None

    @property
    def input_hook(self) -> str | None:
        """The hook the transcoder reads."""
        return self.cfg.input_hook

    @property
    def target_hook(self) -> str:
        """The hook the transcoder reconstructs."""
        return self.cfg.target_hook

    # -- inference ------------------------------------------------------------------------

    def skip_out(self, x: Tensor) -> Tensor:
        """The skip connection's output `x @ W_skip` (zeros without one), `[.., d_out]`."""
        if self.W_skip is None:
            return x.new_zeros(*x.shape[:-1], self.d_out)
        return x @ self.W_skip

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_in)
        out = self.decode_sparse(self.encode_sparse(flat)) + self.skip_out(flat)
        return out.reshape(*lead, self.d_out)

    # -- training ---------------------------------------------------------------------------

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        y = ctx.target
        if y is None:
            raise UserError(
                "a transcoder trains on (input, target) pairs but the batch has no target; "
                "train it from a store with --target-hook"
            )
        dead = None if ctx.dead_mask is None else ctx.dead_mask.nonzero().squeeze(1)
        sel, idx, pre_dead = ops.topk_preacts(
            x, self.W_enc, self.b_enc, int(self.cfg.k), cols=dead, cols_k=self._k_aux(dead)
        )
        code = self._code(x, idx, None, values=sel)
        y_hat = self.decode_sparse(code) + self.skip_out(x)
        terms = {"mse": self.mse(y_hat, y)}
        loss = terms["mse"]
        aux = self.aux_k_dead(x, dead, pre_dead, (y - y_hat).detach())
        if aux is not None:
            terms["aux_k"] = aux
            loss = loss + self.cfg.aux_coefficient * aux
        return TrainOutput(loss, terms, code, y_hat)

    @torch.no_grad()
    def init_sparsity_(self, x: Tensor) -> None:
        """The data-dependent start of the encoder (`centre_init`), on a training sample."""
        if self.cfg.centre_init:
            self.b_enc.copy_(-(x.double().mean(0) @ self.W_enc.double()).float())
        super().init_sparsity_(x)

    @torch.no_grad()
    def init_encoder_scale_(self, x: Tensor, target: Tensor | None = None) -> float:
        """Scale the encoder so the latents' part of the prediction of `target` best matches
        `target - b_dec - skip` (least squares)."""
        if target is None:
            raise ValueError("a transcoder's encoder scale is fitted to its target")
        centred = self.decode_sparse(self.encode_sparse(x)) - self.b_dec
        goal = target - self.b_dec - self.skip_out(x)
        denom = centred.pow(2).sum()
        if not torch.isfinite(denom) or denom <= 0:
            return 1.0
        c = float(((goal * centred).sum() / denom).clamp(1e-3, 1e3))
        self.scale_encoder_(c)
        return c

    # -- checkpoint layout -------------------------------------------------------------------

    def checkpoint_tensors(
        self, scale: float = 1.0, target_scale: float | None = None
    ) -> dict[str, Tensor]:
        """Raw-unit tensors: training saw `x * scale` and `y * target_scale` (None: `scale`),
        so W_enc * s_in, W_dec / s_out, b_dec / s_out, W_skip * s_in / s_out."""
        s_out = scale if target_scale is None else target_scale
        with torch.no_grad():
            out = {
                "W_enc": (self.W_enc * scale).contiguous().clone(),
                "b_enc": self.b_enc.detach().clone(),
                "W_dec": (self.W_dec / s_out).contiguous().clone(),
                "b_dec": (self.b_dec / s_out).clone(),
            }
            if self.W_skip is not None:
                out["W_skip"] = (self.W_skip * (scale / s_out)).contiguous().clone()
        return out

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_checkpoint_tensors(tensors)
        if self.W_skip is not None:
            self.W_skip.copy_(tensors["W_skip"])

    def saelens_config(self) -> dict:
        return {
            **super().saelens_config(),
            "d_out": self.d_out,
            "hook_name_out": self.target_hook,
        }
