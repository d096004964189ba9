"""The RAVEL eval (SAEBench 0.6 `evals/ravel`): how well an SAE's latents let one attribute of an
entity be switched without touching the others.

For each attribute a binary mask over latents is learned (`mask.py`: SAEBench's code trains it
with an annealed sigmoid; its README still describes a cosine selection, the code is followed);
the intervention writes decode((1 − m)·f_base + m·f_source) at the base prompt's entity position,
without the error term. Cause: share of held-out pairs of that attribute whose answer switches to
the source's value; isolation: share of pairs of the other attributes that keep the base's value;
disentangle: their mean. Entities and prompts come from `entities.py` (a stand-in built from
geonames data, or a local RAVEL copy) and are kept only where the model answers correctly.
"""

from __future__ import annotations

from saelab.evaluation.ravel.config import RavelSettings
from saelab.evaluation.spec import EvalContext, EvalResult, EvalSpec, Metric

__all__ = ["METRICS", "SPEC", "RavelSettings", "run"]


def load_table(s: RavelSettings):
    """The entity table the settings name, restricted to their attributes and templates."""
    from saelab.evaluation.ravel.entities import builtin_cities, load_ravel
    from saelab.evaluation.ravel.prompts import CITY_TEMPLATES

    if s.dataset:
        table = load_ravel(s.dataset, s.entity_type)
        table.values = dict(list(table.values.items())[: s.n_entities])
    else:
        table = builtin_cities(s.n_entities, CITY_TEMPLATES)
    table = table.restrict(list(s.attributes))
    table.templates = {a: t[: s.templates_per_attribute] for a, t in table.templates.items()}
    return table


def run(ctx: EvalContext) -> EvalResult:
    from saelab.activations.corpus import bos_token_id
    from saelab.evaluation.ravel.pipeline import conventions, run_ravel

    s: RavelSettings = ctx.settings
    table = load_table(s)
    bos = bos_token_id(ctx.model.tokenizer)
    result = run_ravel(ctx.model, ctx.hook, ctx.sae, table, s, bos, ctx.device, log=print)
    intervals = result.outcomes.intervals(s.n_bootstrap, s.seed)
    return EvalResult(
        result.metrics(), result.n_tokens, conventions(s, table, result), intervals=intervals
    )


_H = "higher"
METRICS = (
    Metric("ravel_disentangle", "RAVEL disentangle score: mean of cause and isolation, averaged over attributes", _H),
    Metric("ravel_cause", "RAVEL cause score: share of held-out pairs whose answer switches to the source entity's value under the attribute's latent mask, averaged over attributes", _H),
    Metric("ravel_isolation", "RAVEL isolation score: share of held-out pairs of the other attributes whose answer keeps the base entity's value under the mask, averaged over attributes", _H),
    Metric("ravel_disentangle_{attribute}", "RAVEL disentangle score of the mask learned for one attribute", _H),
    Metric("ravel_cause_{attribute}", "RAVEL cause score of the mask learned for one attribute", _H),
    Metric("ravel_isolation_{attribute}", "RAVEL isolation score of the mask learned for one attribute (pairs of the other attributes)", _H),
    Metric("ravel_isolation_empty_mask", "RAVEL isolation with an empty mask (the SAE's reconstruction alone, no error term, at the entity token), averaged over attributes: the ceiling of ravel_isolation", None),
    Metric("ravel_model_acc_{attribute}", "share of the attribute's prompts the model answers correctly before filtering (no SAE)", None),
    Metric("ravel_entities_{attribute}", "entities with a correctly answered prompt of the attribute (kept after filtering)", None),
    Metric("ravel_mask_size_{attribute}", "latents in the binary mask learned for the attribute", None),
    Metric("ravel_test_pairs_{attribute}", "held-out prompt pairs (cause + isolation) the attribute's scores are measured on", None),
)  # fmt: skip

SPEC = EvalSpec(
    "ravel",
    "RAVEL: cause/isolation of a learned latent mask that switches one attribute of an entity",
    run,
    METRICS,
    RavelSettings,
    needs_model=True,
)
