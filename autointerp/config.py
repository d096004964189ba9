"""The dataclass configs of auto-interpretation: the LLM endpoint, and what to explain and score."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from saelab_base.errors import UserError


def _registry():
    # imported late: the registry imports the scorers, which import the client, which imports this
    from autointerp import registry

    return registry


def default_explainers() -> list[str]:
    """The registered explainers that run when none is named."""
    return _registry().defaults(_registry().EXPLAINERS)


def default_scorers() -> list[str]:
    """The registered scorers that run when none is named."""
    return _registry().defaults(_registry().SCORERS)


@dataclass
class LLMConfig:
    """An OpenAI-compatible endpoint and how to talk to it."""

    base_url: str | None = None
    """Endpoint root, e.g. https://api.openai.com/v1. None: start the embedded local server."""
    model: str | None = None
    """Model name the endpoint serves. None: the first model the endpoint lists."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never stored).
    None: OPENAI_API_KEY if set, else no key (local servers need none)."""
    concurrency: int | None = None
    """Requests in flight at once. None: 8 against a remote endpoint, 1 against the local server
    (it answers one request at a time on the CPU)."""
    timeout_s: float = 60.0
    """Seconds before one request counts as timed out (and is retried)."""
    max_retries: int = 5
    """Retries of one request on 429, 5xx, timeouts, dropped connections and malformed bodies."""
    backoff_s: float = 1.0
    """First retry delay; doubles on each retry (with jitter), or the server's Retry-After."""
    temperature: float = 0.0
    """Sampling temperature of every request (part of the cache key)."""
    seed: int = 0
    """Sampling seed sent with every request, and the seed of window sampling."""

    def validate(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError(f"`concurrency` must be at least 1 (got {self.concurrency})")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise UserError("`max_retries` must be >= 0 and `timeout_s` positive")


@dataclass
class WindowConfig:
    """How many stored example windows each step uses (explanation and scoring sets are disjoint)."""

    explain_top: int = 8
    """Top-activating windows shown to the explainer."""
    explain_quantile: int = 4
    """Quantile-band windows shown to the explainer (spread over the bands, highest first)."""
    score_activating: int = 10
    """Activating windows (quantile, remaining top, random) for detection, fuzzing, embedding."""
    score_nonactivating: int = 10
    """Windows where the latent is silent throughout, for detection and embedding."""
    simulation_windows: int = 6
    """Windows the simulator predicts token by token (two thirds activating)."""
    batch_size: int = 5
    """Windows per detection / fuzzing request."""
    min_explain: int = 3
    """Below this many explanation windows a latent gets status insufficient_examples."""
    min_score: int = 4
    """Below this many activating (or silent) scoring windows: insufficient_examples."""


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
    """Explain a seeded uniform sample of this many latents instead of a range."""
    explainers: list[str] = field(default_factory=default_explainers)
    """Registered explainers (`autointerp.registry`): llm, baseline (the non-LLM floor), ..."""
    scorers: list[str] = field(default_factory=default_scorers)
    """Registered scorers: detection, fuzzing, embedding, simulation, ..."""
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

    def validate(self) -> None:
        registry = _registry()
        for name, chosen, known in (
            ("explainer", self.explainers, registry.names(registry.EXPLAINERS)),
            ("scorer", self.scorers, registry.names(registry.SCORERS)),
        ):
            bad = [c for c in chosen if c not in known]
            if bad or not chosen:
                raise UserError(
                    f"unknown {name} {bad[0] if bad else '(none)'}: choose from {', '.join(known)}"
                )
        if self.sample is not None and self.sample < 1:
            raise UserError(f"`sample` must be at least 1 (got {self.sample})")
        self.llm.validate()

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
