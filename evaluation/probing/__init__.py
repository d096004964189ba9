"""The probing eval: k-sparse probing of a corpus label of the store (`probes.py`, labels from
`labels.py`) beside a probe on the full activation."""

from __future__ import annotations

from dataclasses import fields

from saelab.evaluation.probing.config import ProbingConfig, ProbingSettings
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSpec, Metric

__all__ = ["METRICS", "ProbingConfig", "ProbingSettings", "SPEC", "run"]


def run(ctx: EvalContext) -> EvalResult:
    from saelab.evaluation.probing.probes import source_probing

    s: ProbingSettings = ctx.settings
    cfg = ProbingConfig(**{f.name: getattr(s, f.name) for f in fields(ProbingConfig)})
    result = source_probing(
        ctx.sae, ctx.store, ctx.hook, cfg, column=s.column, positive=s.positive,
        chunks=ctx.chunks(s.split),
    )  # fmt: skip
    conventions = {**result.conventions(), "store_split": s.split}
    return EvalResult(result.metrics(), result.n_tokens, conventions)


_H = "higher"
METRICS = (
    Metric("probe_acc_full", "test accuracy of a logistic probe on the full activation", None),
    Metric("probe_acc_k{k}", "test accuracy of a logistic probe on the k latents whose class means differ most", _H),
    Metric("probe_chance_acc", "accuracy of always answering the majority class", None),
    Metric("probe_n_train", "training examples of the probes", None),
    Metric("probe_n_test", "test examples of the probes", None),
    Metric("probe_positive_fraction", "fraction of positive examples", None),
)  # fmt: skip

SPEC = EvalSpec("probing", "k-sparse probing of a corpus label", run, METRICS, ProbingSettings)
