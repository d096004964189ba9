"""Intervention scorer: does the explanation predict what steering along the latent does?

For each latent: steer it (adding along its decoder direction) at the strength whose KL between
clean and steered next-token distributions on neutral text is `target_kl` nats (bisection),
generate from neutral prompts with and without the steering (same seeds), and ask the LLM,
given the explanation, which texts were steered. Score: balanced accuracy over valid answers,
with a bootstrap interval; a batch whose answer cannot be read makes its texts failures.

The model work (the SAE, its model and hook, resolved from the results store's `saes` row) is
done by steering's `InterventionBackend` (`saelab.steering.backend`, the layer below), or by
whatever `set_backend_factory` was given (a notebook or test passing an already-loaded model).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from saelab.autointerp import stats
from saelab.autointerp.prompts import prompt
from saelab.autointerp.scorers import Score, ScoringContext, finish
from saelab.autointerp.scorers.classify import ask_in_batches
from saelab.autointerp.windows import escape
from saelab.base.errors import UserError
from saelab.resultstore import ResultsStore


@dataclass(frozen=True)
class InterventionSettings:
    """How each latent is steered and sampled (recorded in every score's provenance)."""

    target_kl: float = 1.0
    """KL(clean ‖ steered) on neutral text, nats, that the strength is chosen to reach."""
    samples_per_prompt: int = 2
    """Generations per neutral prompt, steered and unsteered each."""
    max_new_tokens: int = 16
    """Tokens per generation."""
    temperature: float = 1.0
    """Sampling temperature of the generations."""


SETTINGS = InterventionSettings()


class SteeringBackend(Protocol):
    def texts(self, feature: int, settings: InterventionSettings, seed: int) -> dict[str, Any]:
        """{"steered": [...], "unsteered": [...], "strength": s, "kl": kl, ...provenance}."""


_factory = None
_backends: dict[tuple[str, str], SteeringBackend] = {}
_model_lock = threading.Lock()  # one model, one caller at a time


def set_backend_factory(factory: Callable[[Any, str], SteeringBackend] | None) -> None:
    """`factory(store, sae_id) -> SteeringBackend` (`store`: the `ResultsStore`); None restores
    steering's `InterventionBackend`."""
    global _factory
    _factory = factory
    _backends.clear()


def _backend(store: ResultsStore, sae_id: str) -> SteeringBackend:
    key = (store.path, sae_id)
    if key not in _backends:
        from saelab.steering.backend import InterventionBackend  # the model stack, when used

        factory = _factory or InterventionBackend
        _backends[key] = factory(store, sae_id)
    return _backends[key]


def _texts(store: ResultsStore, sae_id: str, feature: int, seed: int) -> dict:
    with _model_lock:
        return _backend(store, sae_id).texts(feature, SETTINGS, seed)


async def intervention(ctx: ScoringContext, explanation: str) -> Score:
    if ctx.store is None:
        raise UserError("the intervention scorer needs the results store (ScoringContext.store)")
    sae_id, feature = ctx.owner
    made = await asyncio.to_thread(_texts, ctx.store, sae_id, feature, ctx.seed)
    items = [(escape(t), True) for t in made["steered"]]
    items += [(escape(t), False) for t in made["unsteered"]]
    random.Random(ctx.seed).shuffle(items)
    template = prompt("intervention")
    predicted, labels, failures = await ask_in_batches(ctx, template, explanation, items)
    p, y = np.array(predicted, bool), np.array(labels, bool)
    value = stats.balanced_accuracy(p, y) if labels else float("nan")
    ci = stats.balanced_accuracy_interval(p, y, ctx.bootstrap, ctx.seed)
    provenance = {
        "scorer": "intervention",
        "model": ctx.client.cfg.model,
        "prompt": template.version,
        "temperature": ctx.client.cfg.temperature,
        "seed": ctx.seed,
        "batch_size": ctx.batch_size,
        "settings": asdict(SETTINGS),
        "steering": {k: v for k, v in made.items() if k not in ("steered", "unsteered")},
        "sampling": "steered (add along the decoder row at the strength reaching the target KL) "
        "and unsteered generations from the same neutral prompts and seeds; order shuffled",
        "statistic": "balanced accuracy over valid answers",
    }
    return finish(
        "intervention", value, ci, provenance,
        n_windows=len(items), n_valid=len(labels), n_failures=failures,
        n_positive=len(made["steered"]), n_negative=len(made["unsteered"]),
    )  # fmt: skip
