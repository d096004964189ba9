"""Explain and score one latent: every explainer, then every scorer on every explanation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from autointerp.client import LLMClient
from autointerp.config import ExplainConfig
from autointerp.explainers import Explanation
from autointerp.registry import EXPLAINERS, SCORERS
from autointerp.scorers import Score, ScoringContext
from autointerp.windows import LatentWindows


@dataclass
class LatentResult:
    feature: int
    explanations: list[Explanation]
    scores: list[tuple[str, Score]]
    """(explainer, score) pairs."""


async def interpret(
    client: LLMClient, windows: LatentWindows, feature: int, owner: tuple, cfg: ExplainConfig
) -> LatentResult:
    short = windows.insufficient(cfg.windows)
    if short:
        return _insufficient(feature, cfg, short)
    explanations = [
        await EXPLAINERS[name].fn(client, windows, owner, cfg) for name in cfg.explainers
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
        db=cfg.db,
    )
    jobs, pairs = [], []
    for expl in explanations:
        for scorer in cfg.scorers:
            if expl.text is None:
                pairs.append((expl.explainer, Score(scorer, "explanation_failed")))
            else:
                jobs.append((expl.explainer, SCORERS[scorer].fn(ctx, expl.text)))
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
