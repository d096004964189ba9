"""Explainers and scorers by name: the one place they are listed, open to additions.

An explainer is `async (client, windows, owner, cfg) -> Explanation`; a scorer is
`async (ScoringContext, explanation text) -> Score`. The built-in ones are listed below as
`module:function` and imported when first used (so listing the names, for `saelab explain
--help`, imports no scorer). `register_explainer` / `register_scorer` add one from a notebook;
another package advertises its own under the entry-point groups `saelab.explainers` and
`saelab.scorers` (the value names the function). `saelab explain --explainers/--scorers` and
`ExplainConfig` accept whatever is registered. `default=False` registers one that runs only when
asked for by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from saelab.base.errors import UserError

ExplainerFn = Callable[..., Awaitable[Any]]
ScorerFn = Callable[..., Awaitable[Any]]


@dataclass
class Entry:
    name: str
    ref: str | Callable[..., Awaitable[Any]]
    """The function, or where it is (`module:attr`), loaded on first use."""
    default: bool
    """Whether it runs when the user names none."""

    @property
    def fn(self) -> Callable[..., Awaitable[Any]]:
        if isinstance(self.ref, str):
            module, _, attr = self.ref.partition(":")
            self.ref = getattr(importlib.import_module(module), attr)
        return self.ref


EXPLAINERS: dict[str, Entry] = {}
SCORERS: dict[str, Entry] = {}
GROUPS = {"explainer": "saelab.explainers", "scorer": "saelab.scorers"}
"""The entry-point group of each kind."""


def register_explainer(name: str, fn: ExplainerFn | str, *, default: bool = True) -> None:
    _register(EXPLAINERS, "explainer", name, fn, default)


def register_scorer(name: str, fn: ScorerFn | str, *, default: bool = True) -> None:
    _register(SCORERS, "scorer", name, fn, default)


def _register(table: dict[str, Entry], kind: str, name: str, fn, default: bool) -> None:
    if name in table and table[name].ref is not fn and table[name].ref != fn:
        raise ValueError(f"{kind} {name!r} is already registered")
    table[name] = Entry(name, fn, default)


register_explainer("llm", "saelab.autointerp.explainers.llm:explainer")
register_explainer("examples", "saelab.autointerp.explainers.examples:explainer")
register_explainer("baseline", "saelab.autointerp.explainers.baseline:explainer")
OFFLINE = frozenset({"examples", "baseline", "embedding"})
"""Explainers and scorers that never ask an LLM."""
register_scorer("detection", "saelab.autointerp.scorers.classify:detection")
register_scorer("fuzzing", "saelab.autointerp.scorers.classify:fuzzing")
register_scorer("embedding", "saelab.autointerp.scorers.embedding:embedding")
register_scorer("simulation", "saelab.autointerp.scorers.simulation:simulation")
# runs the model: only when named
register_scorer(
    "intervention", "saelab.autointerp.scorers.intervention:intervention", default=False
)

_plugins_loaded = False


def _with_plugins(table: dict[str, Entry]) -> dict[str, Entry]:
    """The table with the installed plugins' explainers and scorers (loaded once)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        from importlib.metadata import entry_points

        for kind, group in GROUPS.items():
            target = EXPLAINERS if kind == "explainer" else SCORERS
            for ep in entry_points(group=group):
                if ep.name not in target:
                    target[ep.name] = Entry(ep.name, ep.value, default=False)
    return table


def names(table: dict[str, Entry]) -> list[str]:
    return list(_with_plugins(table))


def defaults(table: dict[str, Entry]) -> list[str]:
    return [name for name, entry in _with_plugins(table).items() if entry.default]


def get(table: dict[str, Entry], name: str) -> Callable[..., Awaitable[Any]]:
    """The function registered as `name` (a one-line error when it fails to load)."""
    entry = _with_plugins(table)[name]
    try:
        return entry.fn
    except (ImportError, AttributeError) as err:
        raise UserError(f"{name!r} ({entry.ref}) failed to load: {err}") from None
