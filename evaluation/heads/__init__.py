"""The heads eval: which attention heads each latent of an attention-output SAE (trained on
`blocks.L.attn.hook_z`, the heads' outputs concatenated) belongs to, by decoder-norm share and
by direct feature attribution on its top examples (`attribution.py`). Per latent and head the
rows go to the results store's `feature_heads` table (the Feature page's "by head" panel); an
SAE on any other hook is skipped with the reason. Reads the activation store only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSkipped, EvalSpec, Metric, Split

__all__ = ["METRICS", "SPEC", "HeadsSettings", "run"]

_Z_HOOK = re.compile(r"(^|\.)attn\.hook_z$")


@dataclass(frozen=True)
class HeadsSettings:
    """Which rows the direct feature attribution reads."""

    split: Split = "all"
    """Store split the top examples come from (all: every committed chunk, as the features
    eval's dashboards)."""
    examples: int = 32
    """Top examples per latent (the rows where it fires most) its DFA shares average over."""
    max_tokens: int = 200_000
    """Most rows read for the top examples."""
    single_head: float = 0.9
    """Decoder-norm share above which a latent counts as a single-head latent."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.examples < 1:
            raise UserError(f"`examples` must be at least 1, got {self.examples}")
        if self.max_tokens < 1:
            raise UserError(f"`max_tokens` must be at least 1, got {self.max_tokens}")
        if not 0 < self.single_head <= 1:
            raise UserError(f"`single_head` is a share in (0, 1], got {self.single_head}")


def head_layout(ctx: EvalContext) -> tuple[int, int]:
    """(n_heads, d_head) of the SAE's hook, or `EvalSkipped` for an SAE that does not read an
    attention layer's heads."""
    if not _Z_HOOK.search(ctx.hook):
        raise EvalSkipped(
            f"the heads eval attributes attention SAEs (trained on blocks.L.attn.hook_z); this "
            f"one reads {ctx.hook}"
        )
    shape = ctx.store.layout(ctx.hook)
    if len(shape) != 2:
        raise EvalSkipped(
            f"the store records {ctx.hook} as shape {shape}, not [n_heads, d_head]: harvest it "
            "again with a current saelab to record its head layout"
        )
    n_heads, d_head = shape
    if ctx.sae.d_in != n_heads * d_head:
        raise UserError(
            f"the SAE reads width {ctx.sae.d_in} but {ctx.hook} holds {n_heads} heads x {d_head}"
        )
    return n_heads, d_head


def run(ctx: EvalContext) -> EvalResult:
    import math

    import torch

    from saelab.evaluation.heads.attribution import norm_shares, store_rows, top_examples
    from saelab.resultstore.rows import FeatureHeadRow

    s: HeadsSettings = ctx.settings
    s.validate()
    n_heads, d_head = head_layout(ctx)
    norm = norm_shares(ctx.sae.W_dec, n_heads).cpu()
    rows = store_rows(ctx.store, ctx.hook, ctx.chunks(s.split), s.max_tokens, ctx.device)
    top, n_rows = top_examples(ctx.sae, rows, n_heads, s.examples)
    dfa, counts = top.dfa_shares()

    max_norm = norm.max(1).values
    has = counts > 0
    max_dfa = dfa.max(1).values  # NaN where the latent never fired
    metrics = {
        "mean_max_head_norm_share": float(max_norm.mean()),
        "single_head_fraction": float((max_norm >= s.single_head).double().mean()),
        "head_latents_with_examples": float(has.double().mean()),
        "n_heads": float(n_heads),
    }
    if bool(has.any()):
        metrics["mean_max_head_dfa_share"] = float(max_dfa[has].mean())
        agree = norm.argmax(1)[has] == dfa[has].argmax(1)
        metrics["top_head_agreement"] = float(agree.double().mean())
    heads = [
        FeatureHeadRow(
            ctx.sae_id,
            f,
            h,
            float(norm[f, h]),
            None if math.isnan(float(dfa[f, h])) else float(dfa[f, h]),
            int(counts[f]),
        )  # fmt: skip
        for f in range(norm.shape[0])
        for h in range(n_heads)
    ]
    conventions = {
        "split": s.split,
        "examples": s.examples,
        "max_tokens": s.max_tokens,
        "single_head": s.single_head,
        "n_heads": n_heads,
        "d_head": d_head,
        "norm_share": "||W_dec[f, head slice]||^2 / ||W_dec[f]||^2",
        "dfa_share": "mean over the latent's top examples (by activation) of |c_h| / sum |c_h'|, "
        "c_h = W_enc[head slice, f] . (z - b_dec)[head slice] (z without the pre-bias)",
    }
    return EvalResult(
        metrics,
        n_rows,
        conventions,
        latent_metrics={
            "max_head_norm_share": max_norm.numpy(),
            "max_head_dfa_share": torch.where(has, max_dfa, torch.nan).numpy(),
        },
        feature_heads=heads,
    )


_H = "higher"
METRICS = (
    Metric("mean_max_head_norm_share", "mean over latents of the largest head's share of the "
           "latent's squared decoder norm (1/n_heads: spread evenly; 1: one head)", None),
    Metric("mean_max_head_dfa_share", "mean over latents with examples of the largest head's "
           "mean |DFA| share on the latent's top examples", None),
    Metric("single_head_fraction", "share of latents whose largest head holds at least "
           "`single_head` (0.9) of the decoder norm", None),
    Metric("top_head_agreement", "share of latents with examples whose largest head is the "
           "same by decoder norm and by DFA", _H),
    Metric("head_latents_with_examples", "share of latents that fired on the rows read", None),
    Metric("n_heads", "attention heads the SAE's hook holds", None),
    Metric("max_head_norm_share", "the largest head's share of the latent's squared decoder "
           "norm", None, per_latent=True),
    Metric("max_head_dfa_share", "the largest head's mean |DFA| share on the latent's top "
           "examples", None, per_latent=True),
)  # fmt: skip

SPEC = EvalSpec(
    "heads",
    "head attribution of an attention SAE (blocks.L.attn.hook_z): decoder-norm and DFA shares",
    run,
    METRICS,
    HeadsSettings,
)
