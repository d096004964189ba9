"""Cross-layer transcoders (CLT): one dictionary over L consecutive MLPs.

The latents of layer l read that layer's MLP input `x_l [.., d_in]` (by default
`blocks.l.ln2.hook_normalized`) and write to the MLP output of every layer l' >= l of the range
through their own decoder `W_dec[l -> l'] [d_latent, d_out]`, so layer l''s output is
reconstructed by all the layers up to it (Anthropic's "circuit tracing" replacement model):

    f_l      = TopK_k(ReLU(x_l W_enc[l] + b_enc[l]))                   [.., d_latent]
    y_hat_l' = b_dec[l'] + sum over l <= l' of f_l W_dec[l -> l']      [.., d_out]
    loss     = sum over l' of MSE(y_hat_l', y_l')  (summed over d_out, mean over tokens) + AuxK

Sparsity is a per-layer TopK (k latents of each layer per token), not circuit-tracer's
JumpReLU: it keeps the CLT comparable with saelab's TopK transcoders (same k per layer, same
d_sae per layer, no sparsity coefficient to tune) and needs no straight-through estimator.
Each latent's decoders, concatenated over the layers it writes to, form one unit-norm row.

AuxK: every layer's dead latents (top `aux_k` of them per token, among that layer's dead ones)
decode through their decoders to the later layers; the sum of these reconstructions is fitted to
the detached residual of all targets, scaled by min(1, dead / (L * aux_k)).

Indexing. `cfg.d_sae` is the number of latents PER LAYER (`d_latent`, as a per-layer
transcoder's d_sae), and `k` too. The module's `d_sae` is the total, L * d_latent: the training
`Code` numbers latent i of layer position p as p * d_latent + i (what dead-latent tracking
counts). The inference API takes model layers (`layers`, e.g. [4, 5, 6, 7]).

Training batches are the input hooks side by side `[batch, L * d_in]` (in `input_hooks` order)
with the target hooks side by side in `StepContext.target` `[batch, L * d_out]`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.topk import TopKConfig, TopKSAE
from saelab.sae.base import Code, StepContext, TrainOutput

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def hook_layer(hook: str) -> int | None:
    """The block number in a hook name (`blocks.5.ln2.hook_normalized` -> 5), or None."""
    found = _BLOCK.search(hook)
    return None if found is None else int(found.group(1))


@dataclass
class CLTConfig(TopKConfig):
    """A cross-layer transcoder: layer l's latents read its MLP input and write to the MLP
    output of every later layer of the range (TopK per layer)."""

    architecture = "clt"

    input_hooks: list[str] | None = None
    """The hook each layer's latents read, one per layer, in layer order (e.g.
    blocks.4.ln2.hook_normalized ... blocks.7.ln2.hook_normalized); None: filled in from the
    run's `layers` and `input_hook`."""
    target_hooks: list[str] | None = None
    """The hook each layer's output is (e.g. blocks.4.hook_mlp_out ...), in the same order; None:
    filled in from the run's `layers` and `target_hook`."""
    input_hook: str = "blocks.{layer}.ln2.hook_normalized"
    """Template of the input hooks (with {layer}) used with the run's `layers`."""
    target_hook: str = "blocks.{layer}.hook_mlp_out"
    """Template of the target hooks (with {layer}) used with the run's `layers`."""
    d_out: int | None = None
    """Width of every target; None takes it from the store when training starts."""
    centre_init: bool = True
    """Start each layer's b_enc at -mean(x_l) W_enc[l] on the first sample (as a transcoder's
    `centre_init`), so the first pre-activations are those of the centred inputs."""
    apply_b_dec_to_input: bool = False
    """Always False: b_dec is in the target space and cannot be subtracted from the input."""

    def default_name(self) -> str:
        layers = self.layers()
        span = f"L{layers[0]}-{layers[-1]}-" if layers else ""
        return f"clt-{span}{self.d_sae}-k{self.k:g}"

    def layers(self) -> list[int] | None:
        """The model layers of the input hooks (their position when a hook names no block);
        None until the hooks are known."""
        if not self.input_hooks:
            return None
        found = [hook_layer(h) for h in self.input_hooks]
        if any(layer is None for layer in found):
            return list(range(len(self.input_hooks)))
        return [int(layer) for layer in found]  # type: ignore[arg-type]

    def validate(self) -> None:
        super().validate()
        if self.apply_b_dec_to_input:
            raise UserError(
                "apply_b_dec_to_input must be False for a cross-layer transcoder (b_dec is in "
                "the target space); drop the option"
            )
        for name in ("input_hook", "target_hook"):
            if "{layer}" not in str(getattr(self, name)):
                raise UserError(
                    f"{name} of a cross-layer transcoder is a template with {{layer}}, e.g. "
                    f"'{CLTConfig.__dataclass_fields__[name].default}'; got {getattr(self, name)!r}"
                )
        if self.d_out is not None and self.d_out < 1:
            raise UserError(f"d_out must be positive, got {self.d_out}")
        if (self.input_hooks is None) != (self.target_hooks is None):
            raise UserError(
                "a cross-layer transcoder needs both input_hooks and target_hooks (one per "
                "layer), or neither (then `layers` fills them in)"
            )
        if self.input_hooks is None or self.target_hooks is None:
            return
        if not self.input_hooks or len(self.input_hooks) != len(self.target_hooks):
            raise UserError(
                f"a cross-layer transcoder needs one target hook per input hook, got "
                f"{len(self.input_hooks)} input and {len(self.target_hooks)} target hooks"
            )
        for hooks in (self.input_hooks, self.target_hooks):
            if len(set(hooks)) != len(hooks):
                raise UserError(f"a hook is given twice in {hooks}; give each layer's hook once")
        layers = self.layers() or []
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise UserError(
                f"the input hooks of a cross-layer transcoder go from the first layer to the "
                f"last; got layers {layers}"
            )

    def resolved_aux_k(self) -> int:
        width = self.d_out if self.d_out is not None else self.d_in
        return self.aux_k if self.aux_k is not None else max(1, (width or 2) // 2)


class CrossLayerTranscoder(TopKSAE):
    """A TopK cross-layer transcoder; see the module docstring for the definition and layout.

    Parameters: `encoder_weight [L, d_latent, d_in]` (exposed as `W_enc [L, d_in, d_latent]`),
    `b_enc [L, d_latent]`, `W_dec[p] [d_latent, L - p, d_out]` (layer position p's decoders to
    positions p..L-1; `decoder(l, l')` is one `[d_latent, d_out]` block), `b_dec [L, d_out]`.
    """

    architecture = "clt"
    config_class = CLTConfig
    saelens_architecture = "clt"
    cfg: CLTConfig

    def __init__(self, cfg: CLTConfig, d_in: int | None = None) -> None:
        # The base class allocates one [d_sae, d_in] encoder and decoder; a CLT has one per
        # layer (and a triangle of decoders), so it sets up its own parameters.
        nn.Module.__init__(self)
        d_in = d_in if d_in is not None else cfg.d_in
        if d_in is None:
            raise ValueError("d_in is unknown: set cfg.d_in or pass d_in")
        if cfg.d_out is None:
            raise ValueError("d_out is unknown: set cfg.d_out (the target hooks' width)")
        if not cfg.input_hooks:
            raise ValueError("the layers are unknown: set cfg.input_hooks and cfg.target_hooks")
        cfg.d_in = d_in
        cfg.validate()
        self.cfg = cfg
        self.n_layers = len(cfg.input_hooks)
        self.d_in, self.d_out, self.d_latent = d_in, int(cfg.d_out), cfg.d_sae
        self.d_sae = self.n_layers * self.d_latent
        self._positions = {layer: p for p, layer in enumerate(self.layers)}
        n, d = self.n_layers, self.d_latent
        g = torch.Generator().manual_seed(cfg.seed)
        w_enc = torch.randn(n, d, d_in, generator=g)
        self.encoder_weight = nn.Parameter(w_enc / w_enc.norm(dim=-1, keepdim=True))
        self.b_enc = nn.Parameter(torch.zeros(n, d))
        decoders = []
        for p in range(n):
            w = torch.randn(d, n - p, self.d_out, generator=g)
            decoders.append(nn.Parameter(w / w.flatten(1).norm(dim=1)[:, None, None]))
        self.W_dec = nn.ParameterList(decoders)
        self.b_dec = nn.Parameter(torch.zeros(n, self.d_out))

    # -- layout --------------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        """The model layers of the range, in order (position p is `layers[p]`)."""
        return self.cfg.layers() or []

    @property
    def input_hooks(self) -> list[str]:
        """The hook each layer's latents read, in layer order."""
        return list(self.cfg.input_hooks or [])

    @property
    def target_hooks(self) -> list[str]:
        """The MLP output each layer reconstructs, in layer order."""
        return list(self.cfg.target_hooks or [])

    @property
    def W_enc(self) -> Tensor:
        """Encoders `[L, d_in, d_latent]` (a transpose view of `encoder_weight`)."""
        return self.encoder_weight.transpose(1, 2)

    def position(self, layer: int) -> int:
        """The position of model layer `layer` in the range (UserError outside it)."""
        try:
            return self._positions[int(layer)]
        except KeyError:
            raise UserError(
                f"layer {layer} is not in this cross-layer transcoder's range {self.layers}"
            ) from None

    def encoder(self, layer: int) -> Tensor:
        """Layer `layer`'s encoder `[d_in, d_latent]` (a view; column i reads latent i), applied
        to that layer's input hook with bias `b_enc[position(layer)]`."""
        return self.W_enc[self.position(layer)]

    def decoder(self, l_src: int, l_dst: int) -> Tensor:
        """The decoder block from layer `l_src`'s latents to layer `l_dst`'s MLP output,
        `[d_latent, d_out]` (a view); l_src <= l_dst."""
        p, q = self.position(l_src), self.position(l_dst)
        if q < p:
            raise UserError(
                f"layer {l_src}'s latents write to layers {l_src} and later, not to {l_dst}"
            )
        return self.W_dec[p][:, q - p]

    def _flat_decoder(self, p: int) -> Tensor:
        """Position p's decoders as `[d_latent, (L - p) * d_out]` (targets side by side)."""
        return self.W_dec[p].view(self.d_latent, -1)

    # -- inference API -------------------------------------------------------------------

    def encode_layer_sparse(self, layer: int, x: Tensor) -> Code:
        """Layer `layer`'s latents on `[N, d_in]` inputs as a sparse `Code` (indices 0 to
        d_latent - 1, this layer's own)."""
        p = self.position(layer)
        sel, idx, _ = ops.topk_preacts(x, self.W_enc[p], self.b_enc[p], int(self.cfg.k))
        vals = ops.gather(x, self.W_enc[p], self.b_enc[p], idx, values=sel).relu()
        return Code(idx, vals, self.d_latent)

    def encode_layer(self, layer: int, x: Tensor) -> Tensor:
        """Layer `layer`'s dense latent activations `[.., d_latent]` from its input `[.., d_in]`."""
        lead = x.shape[:-1]
        code = self.encode_layer_sparse(layer, x.reshape(-1, self.d_in))
        return code.to_dense().reshape(*lead, self.d_latent)

    def decode_to(self, l_src: int, l_dst: int, f: Tensor) -> Tensor:
        """What layer `l_src`'s latents `f [.., d_latent]` write to layer `l_dst`'s MLP output,
        `[.., d_out]` (no bias; b_dec[l_dst] is added once per target, see `bias`)."""
        return f @ self.decoder(l_src, l_dst)

    def write_gradient(self, l_src: int, grads: Mapping[int, Tensor]) -> Tensor:
        """The gradient reaching layer `l_src`'s latents `[.., d_latent]` from gradients at the
        MLP outputs it writes to (`grads[l'] [.., d_out]` at the same positions, for any layers
        l' of the range; those below l_src and missing ones count as zero): the sum over
        l' >= l_src of grads[l'] W_dec[l_src -> l']^T. Times a latent's activation, it is that
        latent's direct effect on whatever the gradients came from (an attribution edge)."""
        p = self.position(l_src)
        total = None
        for layer, grad in grads.items():
            if self.position(layer) < p:
                continue
            part = grad @ self.decoder(l_src, layer).t()
            total = part if total is None else total + part
        if total is None:
            raise UserError(f"no gradient at layer {l_src} or later (given: {sorted(grads)})")
        return total

    def bias(self, layer: int) -> Tensor:
        """The decoder bias of layer `layer`'s MLP output `[d_out]`."""
        return self.b_dec[self.position(layer)]

    def encode(self, x: Tensor) -> Tensor:
        """Every layer's latents `[.., L, d_latent]` from the stacked inputs `[.., L, d_in]`."""
        self._check_stacked(x, self.d_in, "inputs")
        return torch.stack([self.encode_layer(layer, x[..., p, :]) for p, layer in
                            enumerate(self.layers)], dim=-2)  # fmt: skip

    def decode(self, f: Tensor) -> Tensor:
        """The reconstructed MLP outputs `[.., L, d_out]` from every layer's latents
        `[.., L, d_latent]`: y_hat[l'] = b_dec[l'] + sum over l <= l' of f[l] W_dec[l -> l']."""
        self._check_stacked(f, self.d_latent, "latents")
        out = self.b_dec.expand(*f.shape[:-2], -1, -1).clone()
        for p in range(self.n_layers):
            part = f[..., p, :] @ self._flat_decoder(p)
            out[..., p:, :] += part.reshape(*f.shape[:-2], self.n_layers - p, self.d_out)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The reconstructed MLP outputs `[.., L, d_out]` from the stacked inputs `[.., L, d_in]`."""
        self._check_stacked(x, self.d_in, "inputs")
        lead = x.shape[:-2]
        flat = x.reshape(-1, self.n_layers * self.d_in)
        code, _ = self._encode_all(flat, None)
        y_hat = self._decode_all(code)
        return y_hat.reshape(*lead, self.n_layers, self.d_out)

    def _check_stacked(self, t: Tensor, width: int, what: str) -> None:
        if t.dim() < 2 or t.shape[-2:] != (self.n_layers, width):
            raise ValueError(
                f"a cross-layer transcoder over {self.n_layers} layers takes {what} of shape "
                f"[.., {self.n_layers}, {width}], got {tuple(t.shape)}"
            )

    # -- training ------------------------------------------------------------------------

    def _encode_all(
        self, x: Tensor, dead: Tensor | None
    ) -> tuple[list[Code], list[tuple[Tensor, Tensor] | None]]:
        """Each position's `Code` (local indices) on flat inputs `[N, L * d_in]`, and for AuxK
        each position's (dead latent indices, their no-grad pre-activations) or None."""
        codes, dead_parts = [], []
        k = int(self.cfg.k)
        for p in range(self.n_layers):
            xp = x[:, p * self.d_in : (p + 1) * self.d_in].contiguous()
            cols = None
            if dead is not None:
                cols = dead[p * self.d_latent : (p + 1) * self.d_latent].nonzero().squeeze(1)
                cols = cols if cols.numel() else None
            sel, idx, pre_dead = ops.topk_preacts(xp, self.W_enc[p], self.b_enc[p], k, cols=cols)
            shared = ops.shared_segments(idx, self.d_latent)
            vals = ops.gather(
                xp, self.W_enc[p], self.b_enc[p], idx, values=sel, shared=shared
            ).relu()
            codes.append(Code(idx, vals, self.d_latent, shared))
            dead_parts.append(None if cols is None else (cols, pre_dead))
        return codes, dead_parts

    def _decode_all(self, codes: list[Code]) -> Tensor:
        """The flat reconstruction `[N, L * d_out]` of every target from every position's code."""
        width = self.n_layers * self.d_out
        out = self.b_dec.reshape(1, width)
        for p, code in enumerate(codes):
            part = ops.decode(code.idx, code.vals, self._flat_decoder(p), None, code.shared)
            out = out + F.pad(part, (p * self.d_out, 0))
        return out

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        y = ctx.target
        if y is None:
            raise UserError(
                "a cross-layer transcoder trains on (inputs, targets) of several layers but the "
                "batch has no target; train it with `layers` (saelab train --arch clt --layers 4-7)"
            )
        width_in, width_out = self.n_layers * self.d_in, self.n_layers * self.d_out
        if x.shape[-1] != width_in or y.shape[-1] != width_out:
            raise ValueError(
                f"a cross-layer transcoder over {self.n_layers} layers trains on inputs of width "
                f"{width_in} and targets of width {width_out}, got {x.shape[-1]} and {y.shape[-1]}"
            )
        codes, dead_parts = self._encode_all(x, ctx.dead_mask)
        y_hat = self._decode_all(codes)
        per_layer = (y_hat.float() - y.float()).pow(2).view(len(y), self.n_layers, -1).sum(-1)
        per_layer = per_layer.mean(0)
        terms = {"mse": per_layer.sum()}
        for layer, value in zip(self.layers, per_layer):
            terms[f"mse_L{layer}"] = value.detach()
        loss = terms["mse"]
        aux = self._aux_k(x, dead_parts, (y - y_hat).detach())
        if aux is not None:
            terms["aux_k"] = aux
            loss = loss + self.cfg.aux_coefficient * aux
        code = Code(
            torch.cat([c.idx + p * self.d_latent for p, c in enumerate(codes)], 1),
            torch.cat([c.vals for c in codes], 1),
            self.d_sae,
        )
        return TrainOutput(loss, terms, code, y_hat)

    def _aux_k(
        self, x: Tensor, dead_parts: list[tuple[Tensor, Tensor] | None], residual: Tensor
    ) -> Tensor | None:
        """The dead latents' joint reconstruction of the residual (see the module docstring)."""
        k_aux = self.cfg.resolved_aux_k()
        e_hat, n_dead = None, 0
        for p, part in enumerate(dead_parts):
            if part is None:
                continue
            cols, pre_dead = part
            n_dead += cols.numel()
            local = ops.topk(pre_dead, min(k_aux, cols.numel()))[1]
            xp = x[:, p * self.d_in : (p + 1) * self.d_in].contiguous()
            w_enc = self.encoder_weight[p][cols].t()
            vals = ops.gather(xp, w_enc, self.b_enc[p][cols], local, pre=pre_dead).relu()
            w_dec = self._flat_decoder(p)[cols]
            piece = F.pad(ops.decode(local, vals, w_dec, None), (p * self.d_out, 0))
            e_hat = piece if e_hat is None else e_hat + piece
        if e_hat is None:
            return None
        scale = min(n_dead / (self.n_layers * k_aux), 1.0)
        return scale * (e_hat.float() - residual.float()).pow(2).sum(-1).mean()

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove the gradient component parallel to each latent's (concatenated) decoder."""
        if not self.cfg.unit_norm_decoder:
            return
        for w in self.W_dec:
            if w.grad is None:
                continue
            flat_w, flat_g = w.view(len(w), -1), w.grad.view(len(w), -1)
            flat_g -= (flat_g * flat_w).sum(1, keepdim=True) * flat_w

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.cfg.unit_norm_decoder:
            for w in self.W_dec:
                w /= w.view(len(w), -1).norm(dim=1).clamp_min(1e-12)[:, None, None]

    @torch.no_grad()
    def init_encoder_scale_(self, x: Tensor, target: Tensor | None = None) -> float:
        """Scale every encoder by the least-squares factor that best fits the latents' part of
        the reconstruction to `target - b_dec` (flat `[N, L * d_in]` and `[N, L * d_out]`)."""
        if target is None:
            raise ValueError("a cross-layer transcoder's encoder scale is fitted to its targets")
        bias = self.b_dec.reshape(1, -1)
        centred = self._decode_all(self._encode_all(x, None)[0]) - bias
        goal = target - bias
        denom = centred.pow(2).sum()
        if not torch.isfinite(denom) or denom <= 0:
            return 1.0
        c = float(((goal * centred).sum() / denom).clamp(1e-3, 1e3))
        self.scale_encoder_(c)
        return c

    @torch.no_grad()
    def init_sparsity_(self, x: Tensor) -> None:
        """`centre_init` on a flat training sample `[N, L * d_in]`."""
        if self.cfg.centre_init:
            means = x.double().mean(0).view(self.n_layers, 1, self.d_in)
            self.b_enc.copy_(-(means @ self.W_enc.double()).squeeze(1).float())

    @torch.no_grad()
    def set_firing_thresholds_(self, t: Tensor) -> None:
        raise NotImplementedError("a cross-layer transcoder keeps the top k; it has no threshold")

    # -- checkpoint layout ---------------------------------------------------------------

    def _scales(self, scale: float | list[float]) -> Tensor:
        values = [float(scale)] * self.n_layers if isinstance(scale, (int, float)) else scale
        if len(values) != self.n_layers:
            raise ValueError(f"need one scale per layer ({self.n_layers}), got {len(values)}")
        return torch.tensor([float(v) for v in values], device=self.b_dec.device)

    def checkpoint_tensors(
        self, scale: float | list[float] = 1.0, target_scale: float | list[float] | None = None
    ) -> dict[str, Tensor]:
        """Raw-unit tensors. Training saw layer p's input times `scale[p]` and its target times
        `target_scale[p]` (a number: the same for every layer; None: `scale`), so
        W_enc[p] * s_in[p], W_dec[p -> q] / s_out[q], b_dec[q] / s_out[q]. Names: `W_enc
        [L, d_in, d_latent]`, `b_enc [L, d_latent]`, `W_dec_<p> [d_latent, L - p, d_out]` for
        each position p, `b_dec [L, d_out]`."""
        s_in = self._scales(scale)
        s_out = self._scales(scale if target_scale is None else target_scale)
        with torch.no_grad():
            out = {
                "W_enc": (self.W_enc * s_in[:, None, None]).contiguous().clone(),
                "b_enc": self.b_enc.detach().clone(),
                "b_dec": (self.b_dec / s_out[:, None]).contiguous().clone(),
            }
            for p, w in enumerate(self.W_dec):
                out[f"W_dec_{p}"] = (w / s_out[p:, None]).contiguous().clone()
        return out

    @torch.no_grad()
    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of `checkpoint_tensors` at scale 1."""
        self.encoder_weight.copy_(tensors["W_enc"].transpose(1, 2))
        self.b_enc.copy_(tensors["b_enc"])
        self.b_dec.copy_(tensors["b_dec"])
        for p, w in enumerate(self.W_dec):
            w.copy_(tensors[f"W_dec_{p}"])

    def saelens_config(self) -> dict:
        return {
            **super().saelens_config(),
            "d_out": self.d_out,
            "d_latent": self.d_latent,
            "layers": self.layers,
            "input_hooks": self.input_hooks,
            "target_hooks": self.target_hooks,
        }
