"""The core eval: reconstruction and sparsity on the store's held-out tokens (definitions in
`reconstruction.py`, each pinned by a test)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSpec, Metric, Split


@dataclass
class CoreSettings:
    """What the core eval reads."""

    split: Split = field(default="test", metadata={"flag": "--split"})
    """Store split: the held-out tail ("test"), the rest, or all."""
    max_tokens: int | None = field(default=None, metadata={"flag": "--max-tokens"})
    """Cap on tokens (None: the whole split)."""
    batch_size: int = 4096
    """Tokens per batch."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError(
                f"`max_tokens` must be a positive number of tokens, got {self.max_tokens}; "
                "give e.g. 100000, or leave it unset to use the whole split"
            )
        if self.batch_size < 1:
            raise UserError(
                f"`batch_size` must be a positive number of tokens, got {self.batch_size}"
            )


def run(ctx: EvalContext) -> EvalResult:
    from saelab.activations.loader import ActivationLoader, JointHookLoader
    from saelab.evaluation.core.reconstruction import (
        reconstruction_stats,
        target_reconstruction_stats,
    )

    s: CoreSettings = ctx.settings
    if hasattr(ctx.sae, "target_hooks"):
        return _run_clt(ctx)
    target = getattr(ctx.sae, "target_hook", None)
    options = dict(
        batch_size=s.batch_size, split=s.split, test_fraction=ctx.test_fraction,
        drop_last=False, prefetch=1,
    )  # fmt: skip
    if target:  # a transcoder: its input and target at the same tokens
        loader = JointHookLoader(ctx.store, [ctx.hook, target], **options)
    else:
        loader = ActivationLoader(ctx.store, ctx.hook, **options)
    batches = loader if s.max_tokens is None else _capped(loader, s.max_tokens)
    if target:
        cut = loader.columns[ctx.hook].stop
        pairs = ((b[:, :cut].to(ctx.device), b[:, cut:].to(ctx.device)) for b in batches)
        stats = target_reconstruction_stats(ctx.sae, pairs)
    else:
        stats = reconstruction_stats(ctx.sae, (b.to(ctx.device) for b in batches))
    metrics = stats.metrics()
    edges, counts, dead = stats.density_histogram()
    metrics.update({f"log10_density_hist_{i:02d}": float(c) for i, c in enumerate(counts)})
    conventions = {
        **({"target_hook": target, "reconstructs": "the target hook"} if target else {}),
        "split": s.split,
        "max_tokens": s.max_tokens,
        "loader": asdict(loader.cfg),
        "density_hist_edges": edges,
        "dead_latents": dead,
    }
    return EvalResult(metrics, stats.n, conventions)


def _run_clt(ctx: EvalContext) -> EvalResult:
    """A cross-layer transcoder: every input and target hook at the same tokens; the headline
    metrics pool the output layers (targets side by side), `fvu_L{layer}` etc. are each one's."""
    from saelab.activations.loader import JointHookLoader
    from saelab.evaluation.core.reconstruction import clt_reconstruction_stats

    s: CoreSettings = ctx.settings
    clt = ctx.sae
    loader = JointHookLoader(
        ctx.store, [*clt.input_hooks, *clt.target_hooks], batch_size=s.batch_size, split=s.split,
        test_fraction=ctx.test_fraction, drop_last=False, prefetch=1,
    )  # fmt: skip
    batches = loader if s.max_tokens is None else _capped(loader, s.max_tokens)
    n, cut = len(clt.layers), loader.columns[clt.target_hooks[0]].start
    pairs = (
        (b[:, :cut].reshape(len(b), n, -1).to(ctx.device), b[:, cut:].reshape(len(b), n, -1).to(ctx.device))
        for b in batches
    )  # fmt: skip
    pooled, per_layer = clt_reconstruction_stats(clt, pairs)
    metrics = pooled.metrics()
    for layer, stats in per_layer.items():
        m = stats.metrics()
        for name in PER_LAYER:
            metrics[f"{name}_L{layer}"] = m[name]
    edges, counts, dead = pooled.density_histogram()
    metrics.update({f"log10_density_hist_{i:02d}": float(c) for i, c in enumerate(counts)})
    conventions = {
        "target_hooks": clt.target_hooks,
        "reconstructs": "every target hook; headline metrics pool them (targets side by side)",
        "split": s.split,
        "max_tokens": s.max_tokens,
        "loader": asdict(loader.cfg),
        "density_hist_edges": edges,
        "dead_latents": dead,
    }
    return EvalResult(metrics, pooled.n, conventions)


def _capped(batches, max_tokens: int):
    seen = 0
    for b in batches:
        if seen >= max_tokens:
            return
        yield b[: max_tokens - seen]
        seen += len(b)


_H, _L = "higher", "lower"
PER_LAYER = ("fvu", "explained_variance", "mse", "l0", "dead_fraction")
"""The core metrics a cross-layer transcoder also reports per layer (`fvu_L5`, ...)."""
METRICS = (
    Metric("l0", "mean number of non-zero latents per token", None),
    Metric("mse", "mean over tokens of the squared error summed over dimensions", _L),
    Metric("explained_variance", "1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2 over the split", _H),
    Metric("fvu", "fraction of variance unexplained, 1 - explained_variance", _L),
    Metric("cosine", "mean over tokens of cos(x, x_hat)", _H),
    Metric("l2_ratio", "mean over tokens of ||x_hat|| / ||x|| (shrinkage below 1)", None),
    Metric("relative_reconstruction_bias", "E||x_hat||^2 / E<x, x_hat> (1 = unbiased)", None),
    Metric("dead_fraction", "fraction of latents that never fire on the split", _L),
    Metric("dense_fraction", "fraction of latents firing on more than 10% of tokens", _L),
    Metric("n_tokens", "tokens evaluated", None),
    Metric("fvu_L{layer}", "a cross-layer transcoder's FVU of one output layer's target", _L),
    Metric("explained_variance_L{layer}", "explained variance of one output layer (CLT)", _H),
    Metric("mse_L{layer}", "MSE of one output layer's target (CLT)", _L),
    Metric("l0_L{layer}", "active latents per token of one source layer (CLT)", None),
    Metric("dead_fraction_L{layer}", "dead fraction of one source layer's latents (CLT)", _L),
    Metric("log10_density_hist_{bin}", "latents per log10-density bin (edges in the run's config)", None),
)  # fmt: skip

SPEC = EvalSpec(
    "core", "reconstruction metrics on held-out tokens", run, METRICS, CoreSettings, default=True
)
