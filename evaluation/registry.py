"""The evals by name, each with its typed result and the catalogue of the metrics it writes.

An eval is an `EvalSpec`: a runner taking an `EvalContext` and returning an `EvalResult`, plus the
`Metric`s it may emit, each with a one-line definition. `register_eval` adds one (from a notebook
or another package too); `saelab eval --evals` offers whatever is registered. `describe(name)`
gives any stored metric's definition, so tables and the app can say what a number means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saelab_base.errors import UserError


@dataclass(frozen=True)
class Metric:
    """One metric an eval writes into the results store's `metrics` table."""

    name: str
    """Its name; `{…}` marks a family (`probe_acc_k{k}` covers probe_acc_k1, probe_acc_k5, …)."""
    description: str
    """One line: what the number is, in the convention saelab uses."""
    better: str | None = None
    """"higher", "lower", or None where neither direction is better (counts, settings)."""

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = re.split(r"\{[^}]*\}", self.name)
        return re.compile("^" + "[^_]+".join(re.escape(p) for p in parts) + "$")


@dataclass
class EvalResult:
    """What one eval of one SAE produced."""

    metrics: dict[str, float]
    """Metric name -> value (names from the eval's catalogue)."""
    n_tokens: int
    """Tokens the eval read."""
    conventions: dict[str, Any] = field(default_factory=dict)
    """Its configuration and conventions, stored with the run."""
    tables: dict[str, Any] | None = None
    """Per-feature tables (results store table -> pyarrow.Table), for the features eval."""


@dataclass
class EvalContext:
    """What a runner gets: the SAE, the activation store and hook, the run's config, the model."""

    sae: Any
    store: Any
    hook: str
    cfg: Any
    """The `EvalConfig` of the run."""
    model: Any
    """The loaded model (only for specs with `needs_model`; None otherwise)."""
    sae_id: str


@dataclass(frozen=True)
class EvalSpec:
    """A registered eval."""

    name: str
    description: str
    run: Callable[[EvalContext], EvalResult]
    metrics: tuple[Metric, ...]
    needs_model: bool = False
    """Whether the runner needs the language model (loaded once per `evaluate`)."""
    default: bool = False
    """Whether `saelab eval` runs it when --evals is not given."""

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.pattern.match(name)), None)


EVALS: dict[str, EvalSpec] = {}


def register_eval(spec: EvalSpec, *, replace: bool = False) -> EvalSpec:
    """Add an eval under `spec.name`; a taken name is an error unless `replace=True`."""
    if spec.name in EVALS and EVALS[spec.name] is not spec and not replace:
        raise ValueError(f"eval {spec.name!r} is already registered")
    EVALS[spec.name] = spec
    return spec


def get_eval(name: str) -> EvalSpec:
    _load_builtin()
    try:
        return EVALS[name]
    except KeyError:
        raise UserError(f"unknown eval {name!r}: choose from {', '.join(eval_names())}") from None


def eval_names() -> list[str]:
    _load_builtin()
    return list(EVALS)


def default_evals() -> list[str]:
    _load_builtin()
    return [name for name, spec in EVALS.items() if spec.default]


def catalogue() -> list[tuple[str, Metric]]:
    """Every registered metric as (eval name, Metric)."""
    _load_builtin()
    return [(spec.name, m) for spec in EVALS.values() for m in spec.metrics]


def describe(eval_name: str, metric: str) -> str | None:
    """The one-line definition of a stored metric, or None when no eval declares it."""
    _load_builtin()
    spec = EVALS.get(eval_name)
    found = spec.metric(metric) if spec else None
    return found.description if found else None


def check_result(spec: EvalSpec, result: EvalResult) -> None:
    """Every metric declared and finite; a non-finite value is refused before it is stored."""
    for name, value in result.metrics.items():
        if spec.metric(name) is None:
            raise ValueError(f"eval {spec.name!r} emitted {name!r}, which its catalogue lacks")
        if not math.isfinite(float(value)):
            raise UserError(
                f"eval {spec.name!r} computed {name} = {value}; nothing was written and the "
                "results already stored are kept (is the split empty or the SAE broken?)"
            )


def _load_builtin() -> None:
    import evaluation.builtin  # noqa: F401  (registers the built-in evals on first use)
