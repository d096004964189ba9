"""Next-token loss with the SAE spliced in at its hook, beside the clean and zero-ablated model.

CE loss score = (CE_zero − CE_sae)/(CE_zero − CE_clean); KL score = (KL_zero − KL_sae)/KL_zero;
Δ loss = CE_sae − CE_clean (nats). Splicing replaces the activation only at the positions the
SAE was trained on (not BOS or special tokens); the others keep their clean values. Each is
pinned by a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LossStats:
    """Next-token loss of the clean model and with the hook spliced or zeroed."""

    ce_clean: float
    ce_sae: float
    ce_zero: float
    kl_sae: float
    kl_zero: float
    n_tokens: int

    def metrics(self) -> dict[str, float]:
        return {
            "ce_clean": self.ce_clean,
            "ce_sae": self.ce_sae,
            "ce_zero": self.ce_zero,
            "ce_loss_score": (self.ce_zero - self.ce_sae) / (self.ce_zero - self.ce_clean),
            "delta_loss": self.ce_sae - self.ce_clean,
            "kl_sae": self.kl_sae,
            "kl_zero": self.kl_zero,
            "kl_score": (self.kl_zero - self.kl_sae) / self.kl_zero,
            "loss_n_tokens": float(self.n_tokens),
        }


@torch.no_grad()
def loss_stats(
    bridge,
    hook: str,
    reconstruct: Callable[[Tensor], Tensor],
    tokens: Tensor,
    splice_mask: Tensor,
    batch_size: int = 8,
    source_hook: str | None = None,
) -> LossStats:
    """CE and KL over next-token predictions with `reconstruct(x)` replacing the hook's output
    at `splice_mask` positions, and with zeros there. `tokens` `[S, T]`, mask bool `[S, T]`.
    `source_hook` (a transcoder): x is that earlier hook's activation in the same forward pass
    (the MLP's real input), not the replaced hook's own."""

    def hooks(mask: Tensor) -> list:
        seen: dict[str, Tensor] = {}

        def read(act, hook=None):
            seen["x"] = act
            return act

        def splice(act, hook=None):
            out = act.clone()
            x = act if source_hook is None else seen.pop("x")
            out[mask] = reconstruct(x[mask].float()).to(act.dtype)
            return out

        return [(hook, splice)] if source_hook is None else [(source_hook, read), (hook, splice)]

    return spliced_loss_stats(bridge, hooks, [hook], tokens, splice_mask, batch_size)


@torch.no_grad()
def clt_loss_stats(
    bridge, clt, tokens: Tensor, splice_mask: Tensor, batch_size: int = 8
) -> LossStats:
    """`loss_stats` of a cross-layer transcoder: ALL its target hooks replaced at once by its
    reconstructions, ŷ_l' = b_dec[l'] + Σ_{l <= l'} f_l W_dec[l -> l'], each f_l encoded from
    layer l's input hook as it is in the same (spliced) forward pass: the CLT runs in place of
    the MLPs, reading what the replacement upstream of it produced. The zero ablation zeroes
    every target hook."""

    def hooks(mask: Tensor) -> list:
        latents: dict[int, Tensor] = {}
        out = []
        for layer, source, target in zip(clt.layers, clt.input_hooks, clt.target_hooks):

            def read(act, hook=None, _layer=layer):
                latents[_layer] = clt.encode_layer(_layer, act[mask].float())
                return act

            def splice(act, hook=None, _layer=layer):
                y = clt.bias(_layer) + sum(
                    clt.decode_to(src, _layer, f) for src, f in latents.items() if src <= _layer
                )
                out = act.clone()
                out[mask] = y.to(act.dtype)
                return out

            out += [(source, read), (target, splice)]
        return out

    return spliced_loss_stats(bridge, hooks, clt.target_hooks, tokens, splice_mask, batch_size)


@torch.no_grad()
def spliced_loss_stats(
    bridge,
    make_hooks: Callable[[Tensor], list],
    zero_hooks: list[str],
    tokens: Tensor,
    splice_mask: Tensor,
    batch_size: int = 8,
) -> LossStats:
    """CE and KL of the clean model, of the model run with `make_hooks(mask)` (the forward hooks
    that splice a batch, given its `[B, T]` splice mask), and with every `zero_hooks` output
    zeroed at the mask's positions."""
    sums = dict(ce_clean=0.0, ce_sae=0.0, ce_zero=0.0, kl_sae=0.0, kl_zero=0.0)
    count = 0
    for start in range(0, len(tokens), batch_size):
        toks = tokens[start : start + batch_size]
        mask = splice_mask[start : start + batch_size]

        def zero(act, hook=None, _mask=mask):
            out = act.clone()
            out[_mask] = 0
            return out

        clean = bridge(toks, return_type="logits").double().log_softmax(-1)[:, :-1]
        spliced = bridge.run_with_hooks(toks, fwd_hooks=make_hooks(mask), return_type="logits")
        zeroed = bridge.run_with_hooks(
            toks, fwd_hooks=[(h, zero) for h in zero_hooks], return_type="logits"
        )
        target = toks[:, 1:].unsqueeze(-1)
        for name, logp in (
            ("clean", clean),
            ("sae", spliced.double().log_softmax(-1)[:, :-1]),
            ("zero", zeroed.double().log_softmax(-1)[:, :-1]),
        ):
            sums[f"ce_{name}"] += float(-logp.gather(-1, target).sum())
            if name != "clean":
                sums[f"kl_{name}"] += float((clean.exp() * (clean - logp)).sum())
        count += target.numel()
    return LossStats(**{k: v / count for k, v in sums.items()}, n_tokens=count)
