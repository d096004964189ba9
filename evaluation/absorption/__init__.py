"""The absorption eval: first-letter feature absorption (after Chanin et al. 2024 and SAEBench;
the rule in `letters.py`)."""

from __future__ import annotations

from saelab.evaluation.absorption.config import AbsorptionConfig
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSpec, Metric

__all__ = ["METRICS", "SPEC", "AbsorptionConfig", "run"]


def run(ctx: EvalContext) -> EvalResult:
    from saelab.evaluation.absorption.letters import first_letter_absorption

    result = first_letter_absorption(ctx.sae, ctx.store, ctx.hook, ctx.settings)
    return EvalResult(result.metrics(), result.n_tokens, result.conventions())


_L = "lower"
METRICS = (
    Metric("absorption_mean", "mean over scored letters of the first-letter absorption rate", _L),
    Metric("absorption_letters_scored", "letters with enough whole-word tokens to score", None),
    Metric("absorption_letters_insufficient", "letters with too few whole-word tokens", None),
    Metric("absorption_n_tokens", "whole-word tokens read", None),
    Metric("absorption_rate_{letter}", "fraction of the letter's correctly probed test tokens that are absorbed", _L),
    Metric("absorption_n_{letter}", "test tokens of the letter scored", None),
)  # fmt: skip

SPEC = EvalSpec("absorption", "first-letter feature absorption", run, METRICS, AbsorptionConfig)
