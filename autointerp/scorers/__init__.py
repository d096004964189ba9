"""Scorers: how well an explanation predicts where a latent fires.

Each scorer takes a `ScoringContext` (the latent's windows, the LLM client, a seed) and an
explanation, and returns a `Score` with a bootstrap confidence interval, the number of windows,
how many answers were valid and how many could not be read (failures, never counted as right
or wrong), and its provenance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from saelab.autointerp.client import LLMClient
from saelab.autointerp.windows import LatentWindows
from saelab.resultstore import ResultsStore


@dataclass
class ScoringContext:
    windows: LatentWindows
    client: LLMClient | None
    owner: tuple
    """(sae_id, feature): which latent the requests belong to (for the cache)."""
    seed: int
    batch_size: int
    simulation_windows: int
    bootstrap: int
    logprobs: bool = True
    store: ResultsStore | None = None
    """The results store (the intervention scorer finds the SAE's checkpoint and model there)."""


@dataclass
class Score:
    scorer: str
    status: str
    """ok; failed (no valid answer); undefined (e.g. a constant prediction); insufficient_examples;
    explanation_failed."""
    value: float | None = None
    ci: tuple[float, float] | None = None
    n_windows: int = 0
    n_valid: int = 0
    n_failures: int = 0
    n_positive: int = 0
    n_negative: int = 0
    provenance: dict = field(default_factory=dict)


def finish(scorer: str, value: float, ci, provenance: dict, **counts) -> Score:
    """A Score whose status follows from the value and the counts."""
    if counts.get("n_valid", 0) == 0:
        return Score(scorer, "failed", provenance=provenance, **counts)
    if value is None or math.isnan(value):
        return Score(scorer, "undefined", provenance=provenance, **counts)
    return Score(scorer, "ok", float(value), ci, provenance=provenance, **counts)
