"""What an eval is (SAEBench's shape): its typed settings, its `Metric`s, its run function, and
what that run gets (`EvalContext`) and returns (`EvalResult`). Plain types, importable without
torch; an eval's module imports its heavy parts inside its run function.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saelab.base.errors import UserError

Split = Literal["test", "train", "all"]
"""A store split an eval reads: its held-out tail, the rest, or every committed chunk."""


@dataclass(frozen=True)
class Metric:
    """One metric an eval writes: per SAE into `metrics`, or per latent into `latent_metrics`."""

    name: str
    """Its name; `{…}` marks a family (`probe_acc_k{k}` covers probe_acc_k1, probe_acc_k5, …)."""
    description: str
    """One line: what the number is, in the convention saelab uses."""
    better: str | None = None
    """"higher", "lower", or None where neither direction is better (counts, settings)."""
    per_latent: bool = False
    """One value per latent (the `latent_metrics` table) rather than one per SAE."""

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
    """Its settings and conventions, stored with the run."""
    latent_metrics: dict[str, Any] = field(default_factory=dict)
    """Per-latent metric name -> `[d_sae]` values (NaN: not measured for that latent, not
    stored)."""
    tables: dict[str, Any] | None = None
    """Rows for the per-feature dashboard tables (the features eval): table -> pyarrow.Table."""
    vocab: list[str] | None = None
    """The model's token strings, stored once per model (the features eval, for dashboards)."""
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Metric name -> (low, high): its 95% confidence interval over probe seeds, data splits or
    a bootstrap (the eval says which in `conventions["interval"]`); stored beside the value."""
    feature_heads: list[Any] | None = None
    """Per latent and head of an attention SAE (`saelab.resultstore.FeatureHeadRow`, the heads
    eval): replaces the SAE's `feature_heads` rows after the run is written."""


@dataclass
class EvalContext:
    """What a run function gets."""

    sae: Any
    """The SAE module, on `device`, in eval mode."""
    store: Any
    """The activation store (`saelab.activations.store.ActivationStore`)."""
    hook: str
    """The hook the SAE reads."""
    settings: Any
    """This eval's settings (an instance of its spec's `settings` class)."""
    model: Any
    """The loaded model (only for specs with `needs_model`; None otherwise)."""
    sae_id: str
    """The SAE's id in the results store."""
    test_fraction: float
    """Fraction of the store's committed chunks (its tail) held out as the test split
    (`EvalConfig.test_fraction`)."""
    device: str = "cpu"
    """Torch device."""
    sae_folder: Path | None = None
    """The SAE's checkpoint folder (None for an SAE not loaded from one)."""

    def chunks(self, split: str) -> list[int]:
        """The committed chunks of a store split ("test", "train" or "all")."""
        from saelab.activations.loader import split_chunks

        return split_chunks(self.store.committed_chunks(), split, self.test_fraction)


@dataclass(frozen=True)
class NoSettings:
    """An eval without settings."""


@dataclass(frozen=True)
class EvalSpec:
    """A registered eval."""

    name: str
    """Its name (`saelab eval --evals NAME`, the `eval` column of the results store)."""
    description: str
    """One line for `saelab eval --help`."""
    run: Callable[[EvalContext], EvalResult]
    """The run function (imports the eval's heavy parts when called)."""
    metrics: tuple[Metric, ...]
    """Every metric it may write, per SAE and per latent."""
    settings: type = NoSettings
    """Its settings dataclass: defaults are the eval's defaults; each field becomes the flag
    `--NAME-FIELD` of `saelab eval` (with the field's docstring as help)."""
    needs_model: bool = False
    """Whether the run needs the language model (loaded once per `evaluate`)."""
    default: bool = False
    """Whether `saelab eval` runs it when --evals is not given."""

    def metric(self, name: str, per_latent: bool = False) -> Metric | None:
        return next(
            (m for m in self.metrics if m.per_latent == per_latent and m.pattern.match(name)), None
        )

    def make_settings(self, given: Any = None) -> Any:
        """This eval's settings from an instance, a dict of fields, or None (the defaults)."""
        if given is None:
            return self.settings()
        if isinstance(given, self.settings):
            return given
        if isinstance(given, Mapping):
            known = {f.name for f in dataclasses.fields(self.settings)}
            unknown = sorted(set(given) - known)
            if unknown:
                raise UserError(
                    f"the {self.name} eval has no setting {unknown[0]!r}; "
                    f"its settings: {', '.join(sorted(known)) or 'none'}"
                )
            return self.settings(**given)
        raise UserError(
            f"settings of the {self.name} eval must be a {self.settings.__name__} or a dict of "
            f"its fields, got {type(given).__name__}"
        )


def check_result(spec: EvalSpec, result: EvalResult, d_sae: int) -> None:
    """Every metric declared and finite (a NaN never replaces stored rows); per-latent values
    declared and one per latent."""
    for name, value in result.metrics.items():
        if spec.metric(name) is None:
            raise ValueError(f"eval {spec.name!r} emitted {name!r}, which its catalogue lacks")
        if not math.isfinite(float(value)):
            raise UserError(
                f"eval {spec.name!r} computed {name} = {value}; nothing was written and the "
                "results already stored are kept (is the split empty or the SAE broken?)"
            )
    for name, (low, high) in result.intervals.items():
        if name not in result.metrics:
            raise ValueError(f"eval {spec.name!r} gave an interval for {name!r} but no value")
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"eval {spec.name!r} gave the interval [{low}, {high}] for {name!r}")
    for name, values in result.latent_metrics.items():
        if spec.metric(name, per_latent=True) is None:
            raise ValueError(
                f"eval {spec.name!r} emitted the per-latent {name!r}, which its catalogue lacks"
            )
        if len(values) != d_sae:
            raise ValueError(
                f"eval {spec.name!r} gave {len(values)} values of {name!r} for {d_sae} latents"
            )


class EvalSkipped(UserError):
    """Raised by a run function when its eval does not apply to this SAE (the stability eval on
    an SAE without seed twins in a sweep that has some): the runner logs the reason, writes
    nothing for that eval and goes on with the SAE's other evals."""
