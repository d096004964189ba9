"""Detection and fuzzing: the LLM labels windows 1/0; balanced accuracy over valid answers.

Where the endpoint gives logprobs (the local server always does), each window is asked alone
and the answer is read from the next-token probabilities of the allowed answers (1/yes against
0/no), so even a small model that cannot keep to an answer format gives a valid (if weak)
answer. Elsewhere the windows go in batches and the reply's JSON list of 0/1 is parsed.

Detection: activating windows (label 1) and silent ones (label 0), unmarked, shuffled.
Fuzzing: activating windows with marks; half marked where the latent is active (label 1), half
with the same number of marks at random silent positions (label 0).
A batch whose answer cannot be read makes every window in it a failure.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np

from saelab.autointerp import answers, stats
from saelab.autointerp.prompts import prompt
from saelab.autointerp.scorers import Score, ScoringContext, finish
from saelab.autointerp.windows import Window, escape, numbered, render

ANSWER_TOP_LOGPROBS = 20
"""Alternatives asked for at the answer token (the most OpenAI-compatible endpoints give)."""
CONVENTION = {
    "detection": "activating = stored quantile/top/random windows not shown to the explainer; "
    "negatives = windows where the latent is silent on every token; order shuffled with the seed",
    "fuzzing": "activating windows not shown to the explainer; half marked on the active tokens, "
    "half on as many random silent tokens (seeded)",
}


async def detection(ctx: ScoringContext, explanation: str) -> Score:
    items = [(render(w), True) for w in ctx.windows.activating]
    items += [(render(w), False) for w in ctx.windows.silent]
    return await _classify("detection", ctx, explanation, items)


async def fuzzing(ctx: ScoringContext, explanation: str) -> Score:
    rng = random.Random(ctx.seed + 1)
    items = []
    for i, w in enumerate(ctx.windows.activating):
        fake = _random_marks(w, rng) if i % 2 else None
        items.append((render(w, w.active), True) if fake is None else (render(w, fake), False))
    return await _classify("fuzzing", ctx, explanation, items)


def _random_marks(w: Window, rng: random.Random) -> np.ndarray | None:
    silent = np.nonzero(~w.active)[0].tolist()
    n = int(w.active.sum())
    if n == 0 or len(silent) < n:
        return None  # cannot mislabel this one: keep it correctly marked
    marks = np.zeros(len(w.tokens), bool)
    marks[rng.sample(silent, n)] = True
    return marks


async def _classify(
    name: str, ctx: ScoringContext, explanation: str, items: list[tuple[str, bool]]
) -> Score:
    random.Random(ctx.seed).shuffle(items)
    client = ctx.client
    if ctx.logprobs and not (client.logprobs_refused or client.logprobs_missing):
        score = await _classify_by_logprobs(name, ctx, explanation, items)
        if score is not None:
            return score
    return await _classify_by_text(name, ctx, explanation, items)


async def _classify_by_logprobs(
    name: str, ctx: ScoringContext, explanation: str, items: list[tuple[str, bool]]
) -> Score | None:
    """One excerpt per request; the answer is the next-token probability of yes against no.

    None when the endpoint gives no logprobs (the caller parses free text instead).
    """
    template = prompt(f"{name}_one")

    async def ask(text: str):
        return await ctx.client.complete(
            template.messages(explanation=escape(explanation), example=text),
            max_tokens=1,
            owner=ctx.owner,
            logprobs=True,
            top_logprobs=ANSWER_TOP_LOGPROBS,
        )

    first = await ask(items[0][0]) if items else None
    if first is not None and first.logprobs is None:
        return None
    replies = [first] + list(await asyncio.gather(*(ask(text) for text, _ in items[1:])))
    predicted, labels, p_yes, failures = [], [], [], 0
    for (_, label), reply in zip(items, replies):
        p = answers.yes_probability(reply.logprobs)
        if p is None:
            failures += 1
            continue
        p_yes.append(p)
        predicted.append(p > 0.5)
        labels.append(label)
    answer = {
        "answer": f"next-token probabilities of the allowed answers (1/yes vs 0/no among the "
        f"top {ANSWER_TOP_LOGPROBS} logprobs of the first answer token), one excerpt per "
        "request; predicted 1 when P(yes) > P(no)",
        "batch_size": 1,
        "mean_p_yes": float(np.mean(p_yes)) if p_yes else None,
        # threshold-free: a small judge that says yes to nearly everything (P(yes) > 0.5 on
        # every window) still orders windows, which balanced accuracy at 0.5 cannot see
        "auroc": _finite_or_none(stats.auroc(np.array(p_yes), np.array(labels, bool))),
    }
    return _score(name, ctx, template, items, predicted, labels, failures, answer)


async def _classify_by_text(
    name: str, ctx: ScoringContext, explanation: str, items: list[tuple[str, bool]]
) -> Score:
    """Batches of excerpts; the answer is a JSON list of 0/1 parsed from the reply."""
    template = prompt(name)
    predicted, labels, failures = await ask_in_batches(ctx, template, explanation, items)
    answer = {
        "answer": "a JSON list of 0/1 parsed from the reply (an unreadable reply fails its batch)",
        "batch_size": ctx.batch_size,
    }
    return _score(name, ctx, template, items, predicted, labels, failures, answer)


async def ask_in_batches(
    ctx: ScoringContext, template, explanation: str, items: list[tuple[str, bool]]
) -> tuple[list[bool], list[bool], int]:
    """Ask which of `items` (rendered text, label) fit the explanation, `ctx.batch_size` at a
    time, each reply a JSON list of 0/1; returns (predicted, labels, failures), where every
    item of a batch whose reply cannot be read is a failure."""
    batches = [items[i : i + ctx.batch_size] for i in range(0, len(items), ctx.batch_size)]

    async def ask(batch):
        reply = await ctx.client.complete(
            template.messages(
                explanation=escape(explanation),
                examples=numbered([text for text, _ in batch]),
                count=str(len(batch)),
            ),
            max_tokens=8 + 4 * len(batch),
            owner=ctx.owner,
        )
        return answers.int_list(reply.text, len(batch), 0, 1)

    replies = await asyncio.gather(*(ask(b) for b in batches))
    predicted, labels, failures = [], [], 0
    for batch, reply in zip(batches, replies):
        if reply is None:
            failures += len(batch)
            continue
        predicted += reply
        labels += [label for _, label in batch]
    return predicted, labels, failures


def _finite_or_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _score(name, ctx, template, items, predicted, labels, failures, answer: dict) -> Score:
    predicted_arr, label_arr = np.array(predicted, bool), np.array(labels, bool)
    value = stats.balanced_accuracy(predicted_arr, label_arr) if labels else float("nan")
    ci = stats.balanced_accuracy_interval(predicted_arr, label_arr, ctx.bootstrap, ctx.seed)
    provenance = {
        "scorer": name,
        "model": ctx.client.cfg.model,
        "prompt": template.version,
        "temperature": ctx.client.cfg.temperature,
        "seed": ctx.seed,
        **answer,
        "sampling": CONVENTION[name],
        "statistic": "balanced accuracy over valid answers",
    }
    return finish(
        name,
        value,
        ci,
        provenance,
        n_windows=len(items),
        n_valid=len(labels),
        n_failures=failures,
        n_positive=sum(1 for _, label in items if label),
        n_negative=sum(1 for _, label in items if not label),
    )
