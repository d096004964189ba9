"""Explain and score one latent: every explainer, then every scorer on every explanation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from saelab.autointerp import registry
from saelab.autointerp.client import LLMClient
from saelab.autointerp.config import ExplainConfig
from saelab.autointerp.explainers import Explanation
from saelab.autointerp.registry import EXPLAINERS, SCORERS
from saelab.autointerp.scorers import Score, ScoringContext
from saelab.autointerp.windows import LatentWindows
from saelab.resultstore import ResultsStore


@dataclass
class LatentResult:
    feature: int
    explanations: list[Explanation]
    scores: list[tuple[str, Score]]
    """(explainer, score) pairs."""


async def interpret(
    client: LLMClient,
    windows: LatentWindows,
    feature: int,
    owner: tuple,
    cfg: ExplainConfig,
    store: ResultsStore | None = None,
) -> LatentResult:
    short = windows.insufficient(cfg.windows, scoring=bool(cfg.scorers))
    if short:
        return _insufficient(feature, cfg, short)
    explanations = [
        await registry.get(EXPLAINERS, name)(client, windows, owner, cfg) for name in cfg.explainers
    ]
    ctx = ScoringContext(
        windows=windows,
        client=client,
        owner=owner,
        seed=cfg.llm.seed * 1_000_003 + feature,
        batch_size=cfg.windows.batch_size,
        simulation_windows=cfg.windows.simulation_windows,
        bootstrap=cfg.bootstrap,
        logprobs=cfg.logprobs,
        store=store,
    )
    jobs, pairs = [], []
    for expl in explanations:
        for scorer in cfg.scorers:
            if expl.text is None:
                pairs.append((expl.explainer, Score(scorer, "explanation_failed")))
            else:
                jobs.append((expl.explainer, registry.get(SCORERS, scorer)(ctx, expl.text)))
    done = await asyncio.gather(*(job for _, job in jobs))
    pairs += [(explainer, score) for (explainer, _), score in zip(jobs, done)]
    return LatentResult(feature, explanations, pairs)


def _insufficient(feature: int, cfg: ExplainConfig, why: str) -> LatentResult:
    explanations = [
        Explanation(name, None, "insufficient_examples", {"reason": why}) for name in cfg.explainers
    ]
    scores = [
        (name, Score(scorer, "insufficient_examples", provenance={"reason": why}))
        for name in cfg.explainers
        for scorer in cfg.scorers
    ]
    return LatentResult(feature, explanations, scores)
