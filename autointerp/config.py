"""`ExplainConfig`: which latents of which SAE are explained and scored, and how.

The endpoint's settings (`LLMConfig`) live with the client and the window counts
(`WindowConfig`) with the windows; both are re-exported here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from saelab.autointerp import registry
from saelab.autointerp.client import LLMConfig
from saelab.autointerp.windows import WindowConfig
from saelab.base.config import check_fields
from saelab.base.errors import UserError

__all__ = ["ExplainConfig", "LLMConfig", "WindowConfig", "default_explainers", "default_scorers"]


OFFLINE_DEFAULT_EXPLAINERS = ("examples", "baseline")
"""The explainers that run when none is named and no endpoint is given: the embedded 135M
model's own explanations score at chance and leak prompt markup, so the LLM is opt-in there
(`--explainers llm examples baseline`)."""


def default_explainers(offline: bool = False) -> list[str]:
    """The registered explainers that run when none is named (`offline`: no endpoint given,
    the embedded model would explain)."""
    chosen = registry.defaults(registry.EXPLAINERS)
    if offline:
        return [name for name in chosen if name in OFFLINE_DEFAULT_EXPLAINERS]
    return chosen


def default_scorers() -> list[str]:
    """The registered scorers that run when none is named."""
    return registry.defaults(registry.SCORERS)


MAX_BOOTSTRAP = 100_000
"""Most bootstrap resamples: 1000 already pins a 95% interval's ends to about a percent."""


@dataclass
class ExplainConfig:
    """`saelab explain`: which latents of which SAE, explained and scored how."""

    db: str
    """The DuckDB results file (holds the SAE's feature examples; receives the scores)."""
    sae: str
    """SAE id, id prefix or name in the results database."""
    features: str | None = None
    """A range `a:b`, or a comma list `3,7,9`. None with sample None: the first 20 latents."""
    sample: int | None = None
    """Explain a seeded uniform sample of this many live latents (not dead, not flagged
    `too_few_examples`) instead of a range."""
    explainers: list[str] | None = None
    """Registered explainers: examples (built from the examples, no LLM), baseline (the
    token-list floor), llm, and any a plugin adds. None: examples and baseline, and llm too
    when `llm.base_url` names an endpoint."""
    scorers: list[str] = field(default_factory=default_scorers)
    """Registered scorers: detection, fuzzing, embedding, simulation, ... Empty: explain only."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """The endpoint (explainer and scorer use the same model)."""
    windows: WindowConfig = field(default_factory=WindowConfig)
    """Window counts."""
    explanation_tokens: int = 60
    """Most tokens an explanation may take."""
    logprobs: bool = True
    """Ask the simulator for logprobs (expected values); parsed values where the endpoint gives none."""
    bootstrap: int = 1000
    """Bootstrap resamples (over windows) for every confidence interval."""
    progress: bool = True
    """Show a progress bar (latents/min, tokens spent)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.explainers is None:
            self.explainers = default_explainers(offline=not self.llm.base_url)

    def validate(self) -> None:
        for name, chosen, known in (
            ("explainer", self.explainers, registry.names(registry.EXPLAINERS)),
            ("scorer", self.scorers, registry.names(registry.SCORERS)),
        ):
            bad = [c for c in chosen if c not in known]
            if bad or (not chosen and name == "explainer"):
                raise UserError(
                    f"unknown {name} {bad[0] if bad else '(none)'}: choose from {', '.join(known)}"
                )
        if self.sample is not None and self.sample < 1:
            raise UserError(f"`sample` must be at least 1 (got {self.sample})")
        if self.sample is not None and self.features is not None:
            raise UserError("give `features` or `sample`, not both")
        if self.explanation_tokens < 1 or self.bootstrap < 1:
            raise UserError("`explanation_tokens` and `bootstrap` must be at least 1")
        if self.bootstrap > MAX_BOOTSTRAP:
            raise UserError(
                f"`bootstrap` {self.bootstrap} resamples is more than any interval needs (and more "
                f"memory than this machine has); use at most {MAX_BOOTSTRAP:,}"
            )
        self.llm.validate()
        self.windows.validate()

    def fingerprint(self) -> dict:
        """What decides the outputs (not where the endpoint is or how fast it is asked)."""
        return {
            "model": self.llm.model,
            "temperature": self.llm.temperature,
            "seed": self.llm.seed,
            "explainers": sorted(self.explainers),
            "scorers": sorted(self.scorers),
            "windows": asdict(self.windows),
            "explanation_tokens": self.explanation_tokens,
            "logprobs": self.logprobs,
            "bootstrap": self.bootstrap,
        }
