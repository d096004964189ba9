"""The steering backend of the intervention scorer (`saelab.autointerp.scorers.intervention`): the
SAE, its model and hook resolved from the results store's `saes` row, and for each latent the
steered and unsteered generations at the strength that reaches the target KL."""

from __future__ import annotations

from saelab.resultstore import ResultsStore
from saelab.steering.generate import Sampling
from saelab.steering.harness import Harness, strength_for_kl
from saelab.steering.run import NEUTRAL

PROMPTS = ["Here is a short story:", "My favourite thing is", "Yesterday I", "The news says"]
"""Neutral generation prompts of the intervention scorer."""


class InterventionBackend:
    def __init__(self, store: ResultsStore, sae_id: str, model=None) -> None:
        from saelab.steering.target import resolve

        self.target = resolve(store, sae_id, model=model)

    def texts(self, feature: int, settings, seed: int) -> dict:
        sampling = Sampling(settings.max_new_tokens, settings.temperature, seed=seed)
        h = Harness(self.target, [feature], PROMPTS, NEUTRAL, sampling,
                    settings.samples_per_prompt, "all", explanation="")  # fmt: skip
        unit = h.unit_values("max_act")[0]

        def edits(s: float):
            return h.feature_edits("add", s, "max_act", "zero")

        strength, kl = strength_for_kl(lambda s: h.kl(edits(s))[0], settings.target_kl)
        steered = h.texts(h.generate_samples(edits(strength)))
        return {
            "steered": steered, "unsteered": h.texts(h.clean), "strength": strength,
            "unit": "max_act", "unit_value": unit, "kl": kl, "hook": self.target.hook,
            "model_sha256": self.target.model.weights_sha256, "prompts": PROMPTS,
        }  # fmt: skip
