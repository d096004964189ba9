"""The loss eval: next-token CE and KL with the SAE spliced in at its hook, beside the clean and
zero-ablated model (definitions in `splice.py`, each pinned by a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSpec, Metric, Split


@dataclass
class LossSettings:
    """Which sequences the loss eval runs the model on."""

    split: Split = field(default="test", metadata={"flag": "--split"})
    """Store split whose sequences are read: the held-out tail ("test"), the rest, or all."""
    sequences: int = 32
    """Sequences the model runs on (each three times: clean, spliced, zeroed)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.sequences < 1:
            raise UserError(
                f"`sequences` must be at least 1, got {self.sequences}; give e.g. 32, "
                "or leave loss out of `evals`"
            )


def run(ctx: EvalContext) -> EvalResult:
    import numpy as np
    import torch

    from saelab.evaluation.loss.splice import clt_loss_stats, loss_stats

    s: LossSettings = ctx.settings
    tokens, masks = [], []
    for c in ctx.chunks(s.split):
        tokens.append(ctx.store.read_tokens(c))
        masks.append(ctx.store.token_mask(c))
        if sum(len(t) for t in tokens) >= s.sequences:
            break
    toks = torch.from_numpy(np.concatenate(tokens)[: s.sequences]).long().to(ctx.device)
    mask = torch.from_numpy(np.concatenate(masks)[: s.sequences]).to(ctx.device)
    target = getattr(ctx.sae, "target_hook", None)
    clt_targets = getattr(ctx.sae, "target_hooks", None)
    if clt_targets:  # a cross-layer transcoder: every MLP output of its range at once
        stats = clt_loss_stats(ctx.model.bridge, ctx.sae, toks, mask)
    elif target:  # a transcoder: its prediction replaces the target, fed by the real input
        stats = loss_stats(
            ctx.model.bridge, target, lambda x: ctx.sae(x.flatten(1)), toks, mask,
            source_hook=ctx.hook,
        )  # fmt: skip
    else:
        # x is [N, *per-token shape]: per-head hooks (attn.hook_z) are read flattened, as stored
        stats = loss_stats(
            ctx.model.bridge, ctx.hook, lambda x: ctx.sae(x.flatten(1)).view_as(x), toks, mask
        )
    conventions = {
        **({"spliced_at": target, "fed_by": ctx.hook} if target else {}),
        **(
            {
                "spliced_at": clt_targets,
                "fed_by": ctx.sae.input_hooks,
                "inputs": "same spliced pass",
            }
            if clt_targets
            else {}
        ),  # fmt: skip
        "split": s.split,
        "sequences": len(toks),
        "splice": "non-BOS, non-special positions only",
        "ce": "next-token, all positions",
    }
    return EvalResult(stats.metrics(), stats.n_tokens, conventions)


_H, _L = "higher", "lower"
METRICS = (
    Metric("ce_clean", "next-token cross-entropy of the clean model (nats)", None),
    Metric("ce_sae", "cross-entropy with the SAE's reconstruction spliced in (nats)", _L),
    Metric("ce_zero", "cross-entropy with the hook's activation zeroed (nats)", None),
    Metric("ce_loss_score", "fraction of loss recovered, (ce_zero - ce_sae) / (ce_zero - ce_clean)", _H),
    Metric("delta_loss", "ce_sae - ce_clean (nats)", _L),
    Metric("kl_sae", "mean KL(clean || spliced) of the next-token distribution (nats)", _L),
    Metric("kl_zero", "mean KL(clean || zero-ablated) (nats)", None),
    Metric("kl_score", "(kl_zero - kl_sae) / kl_zero", _H),
    Metric("loss_n_tokens", "next-token predictions evaluated", None),
)  # fmt: skip

SPEC = EvalSpec(
    "loss", "CE/KL loss with the SAE spliced in", run, METRICS, LossSettings,
    needs_model=True, default=True,
)  # fmt: skip
