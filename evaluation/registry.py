"""The evals by name, and the catalogue of every metric they write. Importable without torch.

Each built-in eval is a module (or folder) of `saelab.evaluation` whose `SPEC` is an `EvalSpec`:
its settings dataclass, metrics and run function. Adding one is one line in `BUILTIN`.
`register_eval` adds one from a notebook; another package advertises its own under the
entry-point group `saelab.evals` (the value names an `EvalSpec`), and `saelab eval --evals`, its
flags and `describe` then know it like a built-in.
"""

from __future__ import annotations

import importlib

from saelab.base.errors import UserError
from saelab.base.plugins import load_plugins
from saelab.evaluation.spec import EvalSpec, Metric

BUILTIN = (
    "saelab.evaluation.core:SPEC",
    "saelab.evaluation.loss:SPEC",
    "saelab.evaluation.features:SPEC",
    "saelab.evaluation.probing:SPEC",
    "saelab.evaluation.absorption:SPEC",
    "saelab.evaluation.scr_tpp:SCR_SPEC",
    "saelab.evaluation.scr_tpp:TPP_SPEC",
    "saelab.evaluation.ravel:SPEC",
    "saelab.evaluation.unlearning:SPEC",
    "saelab.evaluation.stability:SPEC",
    "saelab.evaluation.heads:SPEC",
)
"""The built-in evals, in the order `saelab eval` runs and lists them."""
ENTRY_POINT_GROUP = "saelab.evals"

EVALS: dict[str, EvalSpec] = {}
_plugins_loaded = False


def register_eval(spec: EvalSpec, *, replace: bool = False) -> EvalSpec:
    """Add an eval under `spec.name`; a taken name is an error unless `replace=True`."""
    if not isinstance(spec, EvalSpec):
        raise TypeError(f"register_eval takes an EvalSpec, got {type(spec).__name__}")
    if spec.name in EVALS and EVALS[spec.name] is not spec and not replace:
        raise ValueError(f"eval {spec.name!r} is already registered")
    EVALS[spec.name] = spec
    return spec


def _load(reference: str) -> EvalSpec:
    module, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module), attr)


for _reference in BUILTIN:
    register_eval(_load(_reference))


def _evals() -> dict[str, EvalSpec]:
    """Every registered eval, the installed plugins' included (loaded on first use; a plugin
    that fails to load is skipped with a warning, so it cannot take `saelab eval` down)."""
    global _plugins_loaded
    if not _plugins_loaded:
        load_plugins(ENTRY_POINT_GROUP, "eval", EVALS, register_eval)
        _plugins_loaded = True
    return EVALS


def all_evals() -> dict[str, EvalSpec]:
    """Every registered eval by name (the installed plugins' included)."""
    return dict(_evals())


def get_eval(name: str) -> EvalSpec:
    try:
        return _evals()[name]
    except KeyError:
        raise UserError(f"unknown eval {name!r}: choose from {', '.join(eval_names())}") from None


def eval_names() -> list[str]:
    return list(_evals())


def default_evals() -> list[str]:
    return [name for name, spec in _evals().items() if spec.default]


def catalogue() -> list[tuple[str, Metric]]:
    """Every registered metric, per SAE and per latent, as (eval name, Metric)."""
    return [(spec.name, m) for spec in _evals().values() for m in spec.metrics]


def describe(eval_name: str, metric: str, per_latent: bool = False) -> str | None:
    """The one-line definition of a stored metric, or None when no eval declares it."""
    spec = _evals().get(eval_name)
    found = spec.metric(metric, per_latent) if spec else None
    return found.description if found else None


def direction(metric: str, eval_name: str | None = None) -> str | None:
    """ "higher" or "lower" (which is better) for a stored metric, None where neither is."""
    for name, m in catalogue():
        if (eval_name is None or name == eval_name) and m.pattern.match(metric):
            return m.better
    return None
