"""Explainers and scorers by name: the one place they are listed, open to additions.

An explainer is `async (client, windows, owner, cfg) -> Explanation`; a scorer is
`async (ScoringContext, explanation text) -> Score`. `register_explainer` / `register_scorer`
add one from a notebook or another package; `saelab explain --explainers/--scorers` and
`ExplainConfig` accept whatever is registered. `default=False` registers one that runs only
when asked for by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from autointerp.explainers import Explanation, baseline, llm
from autointerp.scorers import Score, ScoringContext
from autointerp.scorers.classify import detection, fuzzing
from autointerp.scorers.embedding import embedding
from autointerp.scorers.intervention import intervention
from autointerp.scorers.simulation import simulation

ExplainerFn = Callable[[Any, Any, tuple, Any], Awaitable[Explanation]]
ScorerFn = Callable[[ScoringContext, str], Awaitable[Score]]


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable[..., Awaitable[Any]]
    default: bool
    """Whether it runs when the user names none."""


EXPLAINERS: dict[str, Entry] = {}
SCORERS: dict[str, Entry] = {}


def register_explainer(name: str, fn: ExplainerFn, *, default: bool = True) -> None:
    _register(EXPLAINERS, "explainer", name, fn, default)


def register_scorer(name: str, fn: ScorerFn, *, default: bool = True) -> None:
    _register(SCORERS, "scorer", name, fn, default)


def _register(table: dict[str, Entry], kind: str, name: str, fn, default: bool) -> None:
    if name in table and table[name].fn is not fn:
        raise ValueError(f"{kind} {name!r} is already registered")
    table[name] = Entry(name, fn, default)


def names(table: dict[str, Entry]) -> list[str]:
    return list(table)


def defaults(table: dict[str, Entry]) -> list[str]:
    return [name for name, entry in table.items() if entry.default]


async def _llm_explainer(client, windows, owner, cfg) -> Explanation:
    return await llm.explain(client, windows.explain, owner, cfg.explanation_tokens)


async def _baseline_explainer(client, windows, owner, cfg) -> Explanation:
    return baseline.explain(windows.explain)


register_explainer("llm", _llm_explainer)
register_explainer("baseline", _baseline_explainer)
register_scorer("detection", detection)
register_scorer("fuzzing", fuzzing)
register_scorer("embedding", embedding)
register_scorer("simulation", simulation)
register_scorer("intervention", intervention, default=False)  # runs the model: only when named
