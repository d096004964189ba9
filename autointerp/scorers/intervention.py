"""Intervention scorer: does the explanation predict what steering along the latent does?

For each latent: steer it (adding along its decoder direction) at the strength whose KL between
clean and steered next-token distributions on neutral text is `target_kl` nats (bisection),
generate from neutral prompts with and without the steering (same seeds), and ask the LLM,
given the explanation, which texts were steered. Score: balanced accuracy over valid answers,
with a bootstrap interval; a batch whose answer cannot be read makes its texts failures.

The model work (the SAE, its model and hook, resolved from the results store's `saes` row) is
done by a steering backend, which lives above this package (`circuits.steering.backend`) and is
found through the entry-point group `saelab.steering_backends`, or set with `set_backend_factory`.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from autointerp import stats
from autointerp.prompts import prompt
from autointerp.scorers import Score, ScoringContext, finish
from autointerp.scorers.classify import ask_in_batches
from autointerp.windows import escape
from saelab_base.errors import UserError


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


def set_backend_factory(factory) -> None:
    """`factory(db, sae_id) -> SteeringBackend` (a notebook or test may pass its own)."""
    global _factory
    _factory = factory
    _backends.clear()


def _backend(db: str, sae_id: str) -> SteeringBackend:
    global _factory
    if _factory is None:
        from importlib.metadata import entry_points

        found = list(entry_points(group="saelab.steering_backends"))
        if not found:
            raise UserError(
                "the intervention scorer needs a steering backend (saelab's circuits package, "
                "registered under the entry point group saelab.steering_backends); reinstall saelab"
            )
        _factory = found[0].load()
    key = (db, sae_id)
    if key not in _backends:
        _backends[key] = _factory(db, sae_id)
    return _backends[key]


def _texts(db: str, sae_id: str, feature: int, seed: int) -> dict:
    with _model_lock:
        return _backend(db, sae_id).texts(feature, SETTINGS, seed)


async def intervention(ctx: ScoringContext, explanation: str) -> Score:
    if ctx.db is None:
        raise UserError("the intervention scorer needs the results file (ScoringContext.db)")
    sae_id, feature = ctx.owner
    made = await asyncio.to_thread(_texts, ctx.db, sae_id, feature, ctx.seed)
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
