"""Simulation: the LLM predicts a 0–10 activation for every token of a window; Pearson
correlation with the true activations (scaled to integers 0–10 by the latent's store-wide max),
pooled over all tokens. Predictions are the expected values under the model's top logprobs where
the endpoint returns them, else the parsed integers.
"""

from __future__ import annotations

import asyncio

import numpy as np

from saelab.autointerp import answers, stats
from saelab.autointerp.prompts import prompt
from saelab.autointerp.scorers import Score, ScoringContext, finish
from saelab.autointerp.windows import Window, escape


def true_levels(w: Window, max_act: float) -> np.ndarray:
    if max_act <= 0:
        return np.zeros(len(w.acts))
    return np.clip(np.round(10 * w.acts / max_act), 0, 10)


def chosen_windows(ctx: ScoringContext) -> list[Window]:
    n_active = min(len(ctx.windows.activating), -(-2 * ctx.simulation_windows // 3))
    n_silent = min(len(ctx.windows.silent), ctx.simulation_windows - n_active)
    return ctx.windows.activating[:n_active] + ctx.windows.silent[:n_silent]


async def simulation(ctx: ScoringContext, explanation: str) -> Score:
    template = prompt("simulation")
    windows = chosen_windows(ctx)

    async def predict(w: Window):
        listing = "\n".join(f"{i}\t{escape(t)}" for i, t in enumerate(w.tokens))
        reply = await ctx.client.complete(
            template.messages(
                explanation=escape(explanation), tokens=listing, count=str(len(w.tokens))
            ),
            max_tokens=8 + 4 * len(w.tokens),
            owner=ctx.owner,
            logprobs=ctx.logprobs,
        )
        parsed = answers.int_list(reply.text, len(w.tokens), 0, 10)
        if parsed is None:
            return None, "unparsable"
        expected = answers.expected_values(reply.logprobs, len(w.tokens))
        return (expected, "logprobs") if expected is not None else (parsed, "parsed")

    replies = await asyncio.gather(*(predict(w) for w in windows))
    groups, sources = [], {"logprobs": 0, "parsed": 0, "unparsable": 0}
    for w, (values, source) in zip(windows, replies):
        sources[source] += 1
        if values is not None:
            groups.append((np.asarray(values, np.float64), true_levels(w, ctx.windows.max_act)))
    if groups:
        value = stats.pearson(
            np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups])
        )
    else:
        value = float("nan")
    ci = stats.pearson_interval(groups, ctx.bootstrap, ctx.seed)
    n_active = sum(1 for w in windows if w.max_act > 0)
    provenance = {
        "scorer": "simulation",
        "model": ctx.client.cfg.model,
        "prompt": template.version,
        "temperature": ctx.client.cfg.temperature,
        "seed": ctx.seed,
        "predictions": sources,
        "sampling": "all-at-once per window; activating windows not shown to the explainer "
        "(two thirds) and silent windows; true activations scaled to 0-10 by the latent's max",
        "statistic": "Pearson correlation pooled over tokens",
    }
    return finish(
        "simulation",
        value,
        ci,
        provenance,
        n_windows=len(windows),
        n_valid=len(groups),
        n_failures=sources["unparsable"],
        n_positive=n_active,
        n_negative=len(windows) - n_active,
    )
