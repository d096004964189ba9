"""SCR (spurious correlation removal) and TPP (targeted probe perturbation), as SAEBench 0.6
defines them (`evals/scr_and_tpp`), on Bias in Bios and Amazon reviews (generated stand-ins, or
local copies with `--scr-dataset` / `--tpp-dataset`).

Both train SAEBench's linear probes on the model's mean-pooled activations at the SAE's hook
(`probes.py`; data and caching in `tasks.py`), rank the SAE's latents by their effect on a
probe and ablate the top n, error term kept (`effects.py`), and score the change (`scores.py`):

- SCR: a probe trained where class and a spurious label are perfectly correlated (professor
  with male, nurse with female) relies on both; ablating the latents of the spurious probe
  should move its accuracy on class labels towards a probe trained on balanced data:
  (A_ablated − A_biased) / (A_oracle − A_biased).
- TPP: ablating the latents most predictive of class i should hurt probe i, not the others:
  mean over i of (drop of probe i) − (mean drop of the other probes).

Every metric is the mean over `repeats` repetitions (new texts and probe seeds) with a 95%
t-interval (`EvalResult.intervals`).
"""

from __future__ import annotations

from saelab.evaluation.scr_tpp.config import ScrSettings, TppSettings
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSpec, Metric

__all__ = ["SCR_SPEC", "TPP_SPEC", "ScrSettings", "TppSettings"]


def run_scr(ctx: EvalContext) -> EvalResult:
    from saelab.evaluation.scr_tpp.run import evaluate_scr_tpp

    return evaluate_scr_tpp(ctx.sae, ctx.model, ctx.hook, ctx.settings)


def run_tpp(ctx: EvalContext) -> EvalResult:
    from saelab.evaluation.scr_tpp.run import evaluate_scr_tpp

    return evaluate_scr_tpp(ctx.sae, ctx.model, ctx.hook, ctx.settings)


_H, _L = "higher", "lower"
SCR_METRICS = (
    Metric("scr_metric_threshold_{n}", "SCR with the top n latents ablated: (A_ablated - A_biased) / (A_oracle - A_biased) in the direction the biased probe is worse at (SAEBench's headline), mean over class pairs", _H),
    Metric("scr_dir1_threshold_{n}", "SCR removing the spurious label's latents, the biased probe scored on class labels", _H),
    Metric("scr_dir2_threshold_{n}", "SCR removing the class label's latents, the biased probe scored on spurious labels", _H),
    Metric("scr_oracle_acc_class", "test accuracy of the class probe trained on balanced data", None),
    Metric("scr_oracle_acc_spurious", "test accuracy of the spurious-label probe trained on balanced data", None),
    Metric("scr_biased_acc_class", "accuracy of the probe trained on the biased set, on balanced class labels", None),
    Metric("scr_biased_acc_spurious", "accuracy of the probe trained on the biased set, on balanced spurious labels", None),
    Metric("scr_biased_acc", "accuracy of the probe trained on the biased set, on biased test data", None),
)  # fmt: skip
TPP_METRICS = (
    Metric("tpp_threshold_{n}_total_metric", "TPP with the top n latents of each class ablated: drop of that class's probe minus the mean drop of the others, mean over classes", _H),
    Metric("tpp_threshold_{n}_intended_diff_only", "accuracy drop of the probe of the class whose top n latents are ablated", _H),
    Metric("tpp_threshold_{n}_unintended_diff_only", "mean accuracy drop of the other classes' probes", _L),
    Metric("tpp_probe_acc", "mean test accuracy of the class probes before ablation", None),
)  # fmt: skip

SCR_SPEC = EvalSpec(
    "scr", "spurious correlation removal (SAEBench SCR)", run_scr, SCR_METRICS, ScrSettings,
    needs_model=True,
)  # fmt: skip
TPP_SPEC = EvalSpec(
    "tpp", "targeted probe perturbation (SAEBench TPP)", run_tpp, TPP_METRICS, TppSettings,
    needs_model=True,
)  # fmt: skip
