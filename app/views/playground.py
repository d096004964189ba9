"""The steering playground: prompt, SAE, latents and mode -> the clean text, the latent-steered
text and the DiffMean baseline's text side by side with each run's metrics, through
`saelab.steering.run.steer`; on request a small sweep of strengths with its frontier plot.

The strength is calibrated by default: `steer` bisects for the strength whose KL(clean ‖ steered)
on neutral text is the target KL (1 nat by default), because a fixed multiple of a latent's
max activation means very different things for different latents and SAEs (at 4× the demo's
latents turn text into "a a a a", KL ≈ 12 nats). A fixed strength stays one click away.

The model is loaded once per process (`st.cache_resource`), and only when Generate is pressed.
Runs are stored through the steering API's own writer: the app's only write to the results
file, made only on the user's request, after the session's read-only connection is closed
(DuckDB refuses a writable and a read-only connection to one file in one process).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import streamlit as st

from saelab.app import common
from saelab.app.tokens import visible

MAX_NEW_TOKENS = 16
"""Default tokens generated per prompt (small: the page waits for them)."""
TARGET_KL = 1.0
"""Default target KL in nats: clearly steered, still fluent on the demo's latents."""
SWEEP = (0.5, 1.0, 2.0)
"""The sweep's strengths, as multiples of the calibrated (or fixed) strength."""
SWEEP_TOKENS = 8
"""Tokens generated per sweep point (the sweep runs several strengths and their baselines)."""
CALIBRATED, FIXED = "calibrated to a target KL", "fixed"
_LAST = "_saelab_playground_last"
_SWEEP = "_saelab_playground_sweep"
JUST_STORED = "_saelab_playground_stored"
"""Session key: the experiment (sweep id) the last Generate stored, for the runs list to open."""
_METHODS = {"none": "clean (unsteered)", "sae": "SAE latent", "diffmean": "DiffMean baseline"}


@dataclass
class Request:
    """What one Generate asked for (kept for the sweep)."""

    sae_id: str
    sae_name: str
    model: str
    prompt: str
    features: list[int]
    mode: str
    target_kl: float | None
    """None: the fixed `strength`."""
    strength: float | None
    tokens: int
    baseline: bool


@st.cache_resource(show_spinner="Loading the model (once per app process)…")
def _model(spec: str):
    from saelab.activations.models import load_model

    return load_model(spec)


def parse_features(text: str) -> list[int]:
    """'3, 7 12' -> [3, 7, 12]; a one-line UserError for anything else."""
    parts = text.replace(",", " ").split()
    try:
        out = [int(p) for p in parts]
    except ValueError:
        raise common.db.UserError(
            f"latents must be whole numbers separated by commas, got {text!r}"
        ) from None
    if not out:
        raise common.db.UserError("name at least one latent to steer")
    return out


def _default_sae(saes: list) -> str:
    """The SAE the page opens on: the `sae` query parameter (id or name), else the app's
    default (`common.default_sae_id`), with a notice when the parameter names no SAE."""
    wanted = st.query_params.get("sae")
    for s in saes:
        if wanted in (s.sae_id, s.name):
            return s.sae_id
    first = common.default_sae_id(saes)
    if wanted:
        name = next(s.name for s in saes if s.sae_id == first)
        common.bad_param("sae", wanted, "names no SAE of this results file", f"SAE {name}")
    return first


def _default_latent(sae_id: str) -> str:
    """The latent field's start value: the `feature` query parameter, else a live latent from
    the store (with a notice for a parameter that is not a latent number)."""
    live = common.q("default_feature", sae_id)
    fallback = "" if live is None else str(live)
    wanted = st.query_params.get("feature")
    if wanted is None:
        return fallback
    try:
        return str(int(wanted))
    except ValueError:
        common.bad_param("feature", wanted, "is not a latent number", f"latent {fallback}")
        return fallback


def _sae_changed() -> None:
    live = common.q("default_feature", st.session_state["pg_sae"])
    st.session_state["pg_feat"] = "" if live is None else str(live)


def render() -> None:
    from saelab.steering.harness import MODES

    st.subheader("Playground")
    saes = common.q("list_saes")
    if not saes:
        st.caption("No SAE in this file to steer with.")
        return
    labels = {s.sae_id: f"{s.name} · {s.architecture} · {s.d_sae}" for s in saes}
    ids = list(labels)
    first = _default_sae(saes)
    default = _default_latent(first)
    # outside the form: another SAE reruns the page, and its default latent fills the field
    sae_id = st.selectbox(
        "SAE", ids, index=ids.index(first), format_func=labels.get, key="pg_sae",
        on_change=_sae_changed,
    )  # fmt: skip
    if "pg_feat" not in st.session_state:
        st.session_state["pg_feat"] = default
    with st.form("playground"):
        what, how_much = st.columns(2)
        prompt = what.text_area("Prompt", "The city of", key="pg_prompt", height=90)
        features = what.text_input(
            "Latent(s)", key="pg_feat",
            help="Latent numbers, comma separated; the default is a live latent of the SAE "
            "(an explained one if any, else the highest max activation).",
        )  # fmt: skip
        mode = what.selectbox("Mode", list(MODES), key="pg_mode")
        how = how_much.radio("Strength", [CALIBRATED, FIXED], horizontal=True, key="pg_how")
        target_kl = how_much.number_input(
            "Target KL (nats)", min_value=0.01, max_value=20.0, value=TARGET_KL, step=0.25,
            key="pg_target_kl",
            help="The strength is found by bisection so that KL(clean ‖ steered) of the "
            "next-token distributions on neutral text is this (add and clamp modes). Around 1 "
            "nat the text is clearly steered and still fluent; past 2-3 it breaks down.",
        )  # fmt: skip
        strength = how_much.number_input(
            "Fixed strength (× the latent's max activation)", value=1.0, key="pg_strength",
            help="Used when the strength is fixed: add adds strength × max_act × the latent's "
            "decoder row; clamp sets the latent to strength × max_act.",
        )  # fmt: skip
        tokens = how_much.number_input("New tokens", 1, 128, MAX_NEW_TOKENS, key="pg_tokens")
        baseline = how_much.checkbox(
            "DiffMean baseline at the same KL", value=True, key="pg_baseline",
            help="Mean activation where the latent fired minus where it was silent (its stored "
            "example windows), added at the strength that gives the SAE run's KL.",
        )  # fmt: skip
        go = st.form_submit_button("Generate", key="pg_go")
    if go:
        sae = next(s for s in saes if s.sae_id == sae_id)
        try:
            request = _request(sae, prompt, features, mode, how, target_kl, strength, tokens,
                               baseline)  # fmt: skip
            st.session_state[_LAST] = _run(request)
            st.session_state.pop(_SWEEP, None)
        except common.db.UserError as err:
            st.error(str(err))
            return
    last = st.session_state.get(_LAST)
    if last:
        _show(last)
        _sweep_section(last)


def _request(sae, prompt, features, mode, how, target_kl, strength, tokens, baseline) -> Request:
    if not prompt.strip():
        raise common.db.UserError("write a prompt to steer")
    latents = parse_features(features)
    _check_latents(sae, latents)
    calibrated = how == CALIBRATED and mode in ("add", "clamp")
    if how == CALIBRATED and mode == "cap":
        raise common.db.UserError(
            "cap mode takes a fixed strength (a KL target is found for add and clamp)"
        )
    return Request(
        sae.sae_id, sae.name, sae.model or "smollm2-135m", prompt, latents, mode,
        float(target_kl) if calibrated else None,
        None if calibrated or mode == "ablate" else float(strength),
        int(tokens), bool(baseline) and mode != "ablate",
    )  # fmt: skip


def _check_latents(sae, latents: list[int]) -> None:
    """One-line notices, before the model loads, for latents the SAE lacks or that never fired
    (a strength in units of max activation means nothing for them)."""
    if not common.q("feature_stats_exist", sae.sae_id):
        raise common.db.UserError(
            f"SAE {sae.name} has no feature statistics yet (`saelab eval --evals features`): "
            "steering needs each latent's max activation as its strength unit"
        )
    stats = common.q("feature_stats", sae.sae_id, tuple(latents))
    live = common.q("default_feature", sae.sae_id)
    hint = f" (latent {live} is live)" if live is not None else ""
    for f in latents:
        if not 0 <= f < sae.d_sae:
            raise common.db.UserError(
                f"latent {f} is out of range: SAE {sae.name} has latents 0 … {sae.d_sae - 1}"
            )
        row = stats.get(f)
        if row is None or row.dead or not (row.max_act or 0) > 0:
            raise common.db.UserError(
                f"latent {f} of {sae.name} never fired in the features eval (dead), so it has "
                f"nothing to steer with; pick a live latent{hint}"
            )


def _steer(request: Request, *, sweep: list[float] | None = None, tokens: int | None = None):
    from saelab.activations.models import model_lock
    from saelab.steering.generate import Sampling
    from saelab.steering.run import SteerConfig, steer

    fixed = request.mode != "ablate" and sweep is None and request.target_kl is None
    cfg = SteerConfig(
        db=common.db_path(), sae=request.sae_id, features=request.features, mode=request.mode,
        strength=request.strength if fixed else None, sweep=sweep,
        target_kl=request.target_kl if sweep is None else None, prompts=[request.prompt],
        sampling=Sampling(max_new_tokens=tokens or request.tokens, temperature=0.0),
        n_samples=1, baseline=request.baseline,
    )  # fmt: skip
    cfg.validate()  # before the model loads
    model = _model(request.model)
    common.close_reader()  # the write needs the file to itself within this process
    with model_lock(model.bridge):  # sessions share the model; a steering hook is on it
        report = steer(cfg, model=model)
    st.cache_data.clear()  # the runs list: read afresh
    st.session_state[JUST_STORED] = report.sweep_id
    return report


def _run(request: Request) -> dict:
    start = time.perf_counter()
    with st.spinner("Calibrating the strength and generating…"):
        report = _steer(request)
    return {"request": request, "report": report, "seconds": time.perf_counter() - start}


def _by_method(report) -> dict:
    return {r.method: r for r in report.runs}


def _show(last: dict) -> None:
    request, report = last["request"], last["report"]
    runs = _by_method(report)
    sae_run = runs.get("sae")
    st.html(
        f"<div class='pg-about' style='color:#555'>{html.escape(request.sae_name)} · latent "
        f"{', '.join(map(str, request.features))} · {html.escape(request.mode)} · generated in "
        f"{last['seconds']:.1f} s · stored (sweep {html.escape(report.sweep_id)}): see "
        "stored runs below</div>"
    )
    if sae_run is not None:
        st.markdown(_strength_sentence(request, sae_run))
    samples = {m: report.samples[r.run_id] for m, r in runs.items()}
    first = samples["none"][0] if samples.get("none") else None
    if first is None:
        return
    st.html(f"<b>prompt</b> <span style='white-space:pre-wrap'>{visible(first.prompt)}</span>")
    shown = [("none", first.clean_text)] + [
        (m, samples[m][0].steered_text) for m in ("sae", "diffmean") if samples.get(m)
    ]
    for column, (method, text) in zip(st.columns(len(shown)), shown):
        css = {"none": "pg-clean", "sae": "pg-steered", "diffmean": "pg-diffmean"}[method]
        column.html(
            f"<div style='white-space:pre-wrap' class='{css}'><b>{_METHODS[method]}</b><br>"
            f"{visible(text)}</div>"
        )
    st.dataframe(_metrics_table(report.runs), hide_index=True, key="pg_metrics")
    st.caption(
        "KL: mean KL(clean ‖ steered) of the next-token distributions on four neutral texts, "
        "steering at every position. Latent activation: the mean SAE activation of the steered "
        "latent(s) on the generated tokens, re-read by the unsteered model (does the text "
        "itself carry the feature?); compare the clean row. Concept: the embedding similarity "
        "to the latent's explanation, or without one the log-prob gain of its top logit tokens. "
        "Perplexity: of the generated tokens under the unsteered model."
    )


def _strength_sentence(request: Request, run) -> str:
    unit = f" (× {run.unit} {run.unit_values[0]:.3g})" if run.unit_values else ""
    if run.strength is None:
        return f"**Ablated** ({request.mode}); KL on neutral text **{run.kl:.2f} nats**."
    if run.target_kl is not None:
        return (
            f"Strength **{run.strength:.3g}**{unit}, **calibrated**: the strength whose KL on "
            f"neutral text is the target **{run.target_kl:g} nats** (reached {run.kl:.2f})."
        )
    warn = " Above about 2 nats the text usually breaks down; try a calibrated strength." if (
        run.kl > 2
    ) else ""  # fmt: skip
    return f"Strength **{run.strength:.3g}**{unit}, fixed; KL on neutral text **{run.kl:.2f} nats**.{warn}"


def _metrics_table(runs) -> list[dict]:
    return [
        {
            "run": _METHODS.get(r.method, r.method),
            "strength": common.fmt(r.strength) if r.method != "none" else "0 (clean)",
            "KL (nats)": common.fmt(r.kl),
            "latent activation on text": common.fmt(r.feature_act),
            "concept": f"{common.fmt(r.concept)} ({r.concept_kind})",
            "perplexity": common.fmt(r.perplexity),
        }
        for r in sorted(runs, key=lambda r: list(_METHODS).index(r.method))
    ]


def _sweep_section(last: dict) -> None:
    request, report = last["request"], last["report"]
    sae_run = _by_method(report).get("sae")
    if sae_run is None or sae_run.strength is None or not sae_run.strength > 0:
        return
    center = sae_run.strength
    strengths = [round(center * m, 4) for m in SWEEP]
    st.markdown("**Sweep**: the steering frontier around this strength")
    if st.button(
        f"Sweep strengths {', '.join(f'{s:.3g}' for s in strengths)} "
        f"({SWEEP_TOKENS} tokens each, with the baseline: about 15 s on CPU)",
        key="pg_sweep",
    ):
        try:
            with st.spinner("Sweeping…"):
                sweep = _steer(request, sweep=strengths, tokens=SWEEP_TOKENS)
        except common.db.UserError as err:
            st.error(str(err))
            return
        st.session_state[_SWEEP] = sweep
    sweep = st.session_state.get(_SWEEP)
    if sweep is None:
        return
    from saelab.steering.run import frontier_figure

    st.plotly_chart(frontier_figure(sweep.runs), key="pg_frontier")
    rows = []
    for r in sorted(sweep.runs, key=lambda r: (list(_METHODS).index(r.method), r.kl)):
        text = sweep.samples[r.run_id][0]
        rows.append({
            "run": _METHODS.get(r.method, r.method), "strength": common.fmt(r.strength),
            "KL (nats)": common.fmt(r.kl), "latent activation on text": common.fmt(r.feature_act),
            "concept": common.fmt(r.concept),
            "text": text.clean_text if r.method == "none" else text.steered_text,
        })  # fmt: skip
    st.dataframe(rows, hide_index=True, key="pg_sweep_table")
