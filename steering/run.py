"""`steer(SteerConfig)`: steer with SAE latents beside the DiffMean baseline and the unsteered
model, measure every run, and store it (the Python API behind `saelab steer`)."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field

from saelab import resultstore as results
from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.steering.generate import Sampling
from saelab.steering.harness import (
    MODES,
    UNITS,
    Harness,
    Outcome,
    check_strength,
    strength_for_kl,
)
from saelab.steering.interventions import POSITIONS, Add

NEUTRAL = [
    "The meeting was moved to Thursday afternoon because several people were travelling.",
    "She opened the window, made a cup of tea and sat down to read the letter again.",
    "In the spring the town repaired the old bridge and painted the railings green.",
    "He said the report would be ready by the end of the week, after one more review.",
]
"""Neutral text on which KL(clean ‖ steered) is measured."""
PROMPTS = ["I think that", "Today we are going to talk about"]
"""Default generation prompts."""


@dataclass
class SteerConfig:
    """One steering experiment on latents of one SAE in the results store."""

    db: str
    """The DuckDB results file: holds the SAE's row and latent statistics; receives the runs."""
    sae: str
    """The SAE: its folder, or its id, id prefix or name in the results file."""
    features: list[int]
    """Latents steered together (same mode and strength)."""
    mode: str = "add"
    """add (s·unit·W_dec), clamp (latent set to s·unit, error kept), ablate, cap (projection)."""
    strength: float | None = None
    """One strength, in units of each latent's `unit` statistic."""
    sweep: list[float] | None = None
    """Several strengths: a steering frontier."""
    target_kl: float | None = None
    """Find the strength whose KL on neutral text is this many nats (bisection)."""
    unit: str = "max_act"
    """The latent statistic a strength of 1 means: max_act or mean_act (the features eval's)."""
    ablation: str = "zero"
    """ablate mode: zero, or mean (the latent's mean over all tokens)."""
    positions: str = "all"
    """Which positions are steered while generating: prompt, generated or all (never BOS)."""
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))
    """Generation prompts."""
    neutral: list[str] = field(default_factory=lambda: list(NEUTRAL))
    """Neutral texts for the KL."""
    sampling: Sampling = field(default_factory=Sampling)
    """Sampling of generations (prompt i uses seed + i)."""
    n_samples: int = 2
    """Generations per prompt."""
    explanation: str | None = None
    """Concept the latents stand for; None: the stored LLM explanation if any, else the concept
    strength is the logit lift of the latents' top logit tokens."""
    baseline: bool = True
    """Also steer with DiffMean at the same KL as each latent run."""
    positive: list[str] | None = None
    """DiffMean positive prompts; None: the latents' stored top-activating windows."""
    negative: list[str] | None = None
    """DiffMean negative prompts; None: stored windows where the latents are silent."""
    model: str | None = None
    """Model spec; None: the one the SAE's row names."""
    store: bool = True
    """Write the runs to the results file."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown steering `mode` {self.mode!r}: choose {', '.join(MODES)}")
        if self.positions not in POSITIONS:
            raise UserError(
                f"unknown `positions` {self.positions!r}: choose {', '.join(POSITIONS)}"
            )
        if self.unit not in UNITS:
            raise UserError(f"unknown strength `unit` {self.unit!r}: choose {', '.join(UNITS)}")
        if self.ablation not in ("zero", "mean"):
            raise UserError(f"unknown `ablation` {self.ablation!r}: choose zero or mean")
        if self.ablation != "zero" and self.mode != "ablate":
            raise UserError(
                f"`ablation` {self.ablation!r} applies to ablate mode only; drop it or use mode "
                "ablate"
            )
        if not self.features:
            raise UserError("name at least one latent to steer")
        given = sum(x is not None for x in (self.strength, self.sweep, self.target_kl))
        if self.mode == "ablate":
            if given:
                raise UserError("ablation takes no strength, sweep or target KL")
        elif given != 1:
            raise UserError("give exactly one of a strength, a sweep or a target KL")
        for s in ([self.strength] if self.strength is not None else []) + list(self.sweep or []):
            check_strength(s)
        if self.sweep is not None and not self.sweep:
            raise UserError("a sweep needs at least one strength")
        if self.target_kl is not None and not (
            self.target_kl > 0 and math.isfinite(self.target_kl)
        ):
            raise UserError(
                f"the target KL must be a positive number of nats, got {self.target_kl}"
            )
        if self.target_kl is not None and self.mode == "cap":
            raise UserError("a target KL is found for add and clamp; give cap a strength")
        if not self.prompts or self.n_samples < 1:
            raise UserError("give at least one prompt and one sample per prompt")
        for name in ("prompts", "neutral", "positive", "negative"):
            texts = getattr(self, name) or []
            if any(not text.strip() for text in texts):
                raise UserError(f"`{name}` holds an empty text; every one must have words")
        if not self.neutral:
            raise UserError("give at least one neutral text (the KL is measured on them)")
        if not self.baseline and (self.positive or self.negative):
            raise UserError(
                "`positive`/`negative` prompts feed the DiffMean baseline, which is switched off; "
                "drop them or keep the baseline"
            )
        if bool(self.positive) != bool(self.negative):
            raise UserError("DiffMean needs both `positive` and `negative` prompts, or neither")
        if len(set(self.features)) != len(self.features) or min(self.features) < 0:
            raise UserError(f"`features` must be distinct latents >= 0, got {self.features}")
        if self.explanation is not None and not self.explanation.strip():
            raise UserError("`explanation` is empty; leave it out to use the stored one")
        self.sampling.validate()


@dataclass
class SteerReport:
    sweep_id: str
    sae_id: str
    runs: list[results.SteeringRunRow]
    """One row per run (method none / sae / diffmean), as stored."""
    samples: dict[str, list[results.SteeringSampleRow]]
    """run_id -> its samples."""


def steer(cfg: SteerConfig, model=None) -> SteerReport:
    """Run the experiment (loading the SAE's model unless one is given) and store it."""
    from saelab.steering.target import resolve

    if not isinstance(cfg, SteerConfig):
        raise UserError(
            f"steer takes a SteerConfig, got {type(cfg).__name__}; build one with "
            "saelab.SteerConfig(db=..., sae=..., features=[...], strength=...)"
        )
    cfg.validate()
    store = results.ResultsStore(cfg.db, mode="update")  # must exist: it holds the SAE's row
    target = resolve(store, cfg.sae, model=model if model is not None else _load(cfg.model))
    bad = [f for f in cfg.features if not 0 <= f < target.sae.d_sae]
    if bad:
        raise UserError(
            f"latent {bad[0]} is out of range: SAE {target.row.name} has latents "
            f"0 … {target.sae.d_sae - 1}"
        )
    explanation = cfg.explanation
    if explanation is None and len(cfg.features) == 1:
        explanation = results.stored_explanation(store, target.row.sae_id, cfg.features[0])
    h = Harness(target, cfg.features, cfg.prompts, cfg.neutral, cfg.sampling, cfg.n_samples,
                cfg.positions, explanation)  # fmt: skip
    units = h.unit_values(cfg.unit) if cfg.mode != "ablate" else []  # dead latents stop here
    sweep_id = uuid.uuid4().hex[:16]
    rows, samples = [], {}

    def record(method: str, strength: float | None, outcome: Outcome, unit_values) -> None:
        row = _row(cfg, target, h, sweep_id, method, strength, outcome, unit_values)
        rows.append(row)
        samples[row.run_id] = _samples(row.run_id, h, outcome)

    record("none", 0.0, h.measure(None), [])
    diffmean = _diffmean(cfg, store, h) if cfg.baseline else None

    kl_at = _KLMemo(h, lambda s: h.feature_edits(cfg.mode, s, cfg.unit, cfg.ablation))
    if cfg.mode == "ablate":
        strengths = [None]
    elif cfg.target_kl is not None:
        strengths = [strength_for_kl(kl_at, cfg.target_kl)[0]]
    else:
        strengths = [cfg.strength] if cfg.strength is not None else list(cfg.sweep)
    for s in strengths:
        edits = h.feature_edits(cfg.mode, s or 0.0, cfg.unit, cfg.ablation)
        outcome = h.measure(edits, kl_at.known(s))
        record("sae", s, outcome, units)
        if diffmean is not None and outcome.kl > 0:
            dm_kl = _KLMemo(h, lambda x: [Add(x * diffmean)])
            c, _ = strength_for_kl(dm_kl, outcome.kl, start=_equal_norm(edits, diffmean))
            outcome = h.measure([Add(c * diffmean)], dm_kl.known(c))
            record("diffmean", c, outcome, [float(diffmean.norm())])
    if cfg.store:
        flat = [s for run in rows for s in samples[run.run_id]]
        results.write_steering_runs(store, rows, flat)
    return SteerReport(sweep_id, target.row.sae_id, rows, samples)


class _KLMemo:
    """KL as a function of the strength, remembering each evaluation's steered logits so the
    measurement at the strength found does not run the neutral texts again."""

    def __init__(self, h: Harness, edits_at) -> None:
        self.h, self.edits_at, self.seen = h, edits_at, {}

    def __call__(self, s: float) -> float:
        self.seen[s] = self.h.kl(self.edits_at(s))
        return self.seen[s][0]

    def known(self, s: float | None):
        return self.seen.get(s)


def _equal_norm(edits: list, diffmean) -> float:
    """A first DiffMean strength for the KL search: the one whose vector is as long as the
    SAE's added vector (about the same KL, so the search starts near its answer)."""
    norm = float(diffmean.norm())
    if len(edits) == 1 and isinstance(edits[0], Add) and norm > 0:
        guess = float(edits[0].vector.norm()) / norm
        if math.isfinite(guess) and guess > 0:
            return guess
    return 1.0


def _load(spec: str | None):
    if spec is None:
        return None
    from saelab.activations.models import load_model

    return load_model(spec)


def _diffmean(cfg: SteerConfig, store: results.ResultsStore, h: Harness):
    """The DiffMean vector from the given prompt sets or the latents' stored windows."""
    from saelab.steering.diffmean import diffmean_from_windows, diffmean_vector

    if cfg.positive and cfg.negative:
        pos = [h.encode(t) for t in cfg.positive]
        neg = [h.encode(t) for t in cfg.negative]
    else:
        rows = results.feature_examples(store, h.t.row.sae_id, cfg.features)
        windows = [r for r in rows if r.kind == "top"][:16]
        windows += [r for r in rows if r.kind == "nonactivating"][:16]
        try:
            return diffmean_from_windows(h.bridge, h.t.hook, windows, int(h.encode("")[0]))
        except ValueError:
            raise UserError(
                "the DiffMean baseline needs the latents' stored windows (features eval) with "
                "active and silent tokens, or positive and negative prompts; or turn it off"
            ) from None
    return diffmean_vector(h.bridge, h.t.hook, pos, neg)


def _row(
    cfg, target, h, sweep_id, method, strength, outcome: Outcome, unit_values
) -> results.SteeringRunRow:
    from saelab.base import __version__

    config = asdict(cfg)
    return results.SteeringRunRow(
        run_id=uuid.uuid4().hex[:16], sweep_id=sweep_id, sae_id=target.row.sae_id,
        features=list(cfg.features), method=method,
        mode=cfg.mode if method == "sae" else ("add" if method == "diffmean" else None),
        strength=strength,
        unit=cfg.unit if method == "sae" else ("diffmean_norm" if method == "diffmean" else None),
        unit_values=list(unit_values), positions=cfg.positions, hook=target.hook,
        model=target.model.name, model_sha256=target.model.weights_sha256,
        kl=outcome.kl, feature_act=outcome.feature_act, concept=outcome.concept,
        concept_kind=h.concept_kind, perplexity=outcome.perplexity, target_kl=cfg.target_kl,
        prompts_json=json.dumps(cfg.prompts), neutral_json=json.dumps(cfg.neutral),
        sampling_json=json.dumps({**asdict(cfg.sampling), "n_samples": cfg.n_samples,
                                  "seeds": "seed + prompt index"}),
        config_json=json.dumps({**config, "explanation_used": h.explanation,
                                "top_tokens": h.top_tokens}, default=str),
        config_hash=results.config_hash(config), saelab_version=__version__,
    )  # fmt: skip


def _samples(run_id: str, h: Harness, outcome: Outcome) -> list[results.SteeringSampleRow]:
    clean = h.texts(h.clean)
    prompts = [(p, seed) for (seed, _, new) in h.clean for p in [seed] * new.shape[0]]
    texts = list(h.prompts)
    out = []
    for i, text in enumerate(outcome.texts):
        prompt_index = i // h.n_samples
        out.append(results.SteeringSampleRow(
            run_id=run_id, sample=i, prompt=h.tok.decode(texts[prompt_index][1:].tolist()),
            seed=prompts[i][1], clean_text=clean[i], steered_text=text,
            steered_tokens=outcome.tokens[i],
            feature_act=float(outcome.sample_feature_act[i]),
            perplexity=float(outcome.sample_perplexity[i]),
            concept=float(outcome.sample_concept[i]),
        ))  # fmt: skip
    return out


def frontier_figure(runs: list[results.SteeringRunRow]):
    """Concept strength and the latent's activation on the generated text against KL, one trace
    per method (plotly); the unsteered run is the point at KL 0."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kind = runs[0].concept_kind if runs else "concept"
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("concept vs KL", "latent activation on the text vs KL")
    )  # fmt: skip
    for method, name in (("sae", "SAE latent"), ("diffmean", "DiffMean"), ("none", "unsteered")):
        rows = sorted((r for r in runs if r.method == method), key=lambda r: r.kl)
        if not rows:
            continue
        label = [f"strength {r.strength:.3g}" if r.strength is not None else "" for r in rows]
        for col, y in ((1, [r.concept for r in rows]), (2, [r.feature_act for r in rows])):
            fig.add_trace(
                go.Scatter(x=[r.kl for r in rows], y=y, mode="lines+markers", name=name,
                           text=label, legendgroup=method, showlegend=col == 1),
                row=1, col=col,
            )  # fmt: skip
    fig.update_xaxes(title_text="KL(clean ‖ steered) on neutral text, nats")
    fig.update_yaxes(title_text=f"concept ({kind})", row=1, col=1)
    fig.update_yaxes(title_text="mean activation on generated tokens", row=1, col=2)
    return fig


def frontier_html(report: SteerReport, path: str) -> str:
    """The frontier of a sweep (`frontier_figure`) as a standalone HTML file."""
    frontier_figure(report.runs).write_html(path, include_plotlyjs=True)
    return path
