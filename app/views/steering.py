"""Steering: stored steering experiments from the file, one entry per experiment (one `saelab
steer` call or one Generate: its unsteered reference, SAE runs and DiffMean baselines together),
labelled by SAE name, latents and strength; clean and steered text side by side. An empty file
says how to make some. Above them the live playground (`app.views.playground`).

The list is drawn after the playground has run, so a run stored by Generate shows in the same
page render.
"""

from __future__ import annotations

from collections import defaultdict

import streamlit as st

from saelab.app import common
from saelab.app.tokens import visible

TITLE = "Steering"
ICON = ":material/tune:"

EMPTY = (
    "No steering runs in this results file yet. Press Generate in the playground below, or "
    "steer from the command line with `saelab steer --db FILE --sae NAME --feature N "
    "--target-kl 1 --prompt TEXT`; runs will show here."
)
_FIELDS = (
    "method", "mode", "strength", "unit", "unit_values", "features", "kl", "feature_act",
    "concept", "concept_kind", "perplexity", "target_kl", "positions", "hook", "model", "sae_id",
    "sweep_id", "run_id", "created_at",
)  # fmt: skip
_METHOD = {"none": "clean (unsteered)", "sae": "SAE latent", "diffmean": "DiffMean baseline"}


def render() -> None:
    from saelab.app.views import playground

    st.title("Steering")
    playground.render()
    _past_runs()


def experiments(runs: list) -> dict[str, list]:
    """Runs grouped by experiment (`sweep_id`), newest experiment first."""
    groups: dict[str, list] = defaultdict(list)
    for r in runs:
        groups[r.sweep_id].append(r)
    order = sorted(groups, key=lambda k: max(str(r.created_at) for r in groups[k]), reverse=True)
    return {k: groups[k] for k in order}


def label(runs: list, sae_names: dict[str, str]) -> str:
    """'topk-2304-k32 · latent 1860 · add · strength 0.331 (target KL 1) · KL 0.98 · + DiffMean
    · 2026-12-06 17:50': what an experiment steered, never a hash."""
    steered = [r for r in runs if r.method == "sae"]
    first = steered[0] if steered else runs[0]
    latents = ", ".join(map(str, first.features))
    parts = [sae_names.get(first.sae_id, first.sae_id[:12]),
             f"latent{'s' if len(first.features) > 1 else ''} {latents}"]  # fmt: skip
    if steered:
        parts.append(first.mode or "")
        strengths = sorted(r.strength for r in steered if r.strength is not None)
        if not strengths:
            parts.append("ablated")
        elif len(strengths) == 1:
            target = f" (target KL {first.target_kl:g})" if first.target_kl is not None else ""
            parts.append(f"strength {strengths[0]:.3g}{target}")
        else:
            parts.append(f"sweep {strengths[0]:.3g}–{strengths[-1]:.3g} ({len(strengths)})")
        if len(steered) == 1:
            parts.append(f"KL {first.kl:.2f}")
    if any(r.method == "diffmean" for r in runs):
        parts.append("+ DiffMean")
    parts.append(str(first.created_at)[:16])
    return " · ".join(parts)


def _past_runs() -> None:
    from saelab.app.views import playground

    st.subheader("Stored runs")
    runs = common.q("steering_runs")
    if not runs:
        st.info(EMPTY)
        return
    names = {s.sae_id: s.name for s in common.q("list_saes")}
    groups = experiments(runs)
    labels = {k: label(v, names) for k, v in groups.items()}
    stored = st.session_state.pop(playground.JUST_STORED, None)
    if stored in labels:  # a run just stored by the playground: show it
        st.session_state["steer_pick"] = stored
    choice = st.selectbox("Experiment", list(labels), format_func=labels.get, key="steer_pick")
    group = sorted(groups[choice], key=lambda r: (list(_METHOD).index(r.method), r.strength or 0))
    st.dataframe(
        [
            {
                "run": _METHOD.get(r.method, r.method),
                "strength": "0 (clean)" if r.method == "none" else common.fmt(r.strength),
                "KL (nats)": common.fmt(r.kl),
                "latent activation on text": common.fmt(r.feature_act),
                "concept": f"{common.fmt(r.concept)} ({r.concept_kind})",
                "perplexity": common.fmt(r.perplexity),
            }
            for r in group
        ],
        hide_index=True,
        key="steer_runs",
    )
    steered = [r for r in group if r.method != "none"] or group
    pick = {r.run_id: f"{_METHOD.get(r.method, r.method)} · strength {common.fmt(r.strength)}"
            for r in steered}  # fmt: skip
    run_id = (
        st.selectbox("Texts of", list(pick), format_func=pick.get, key=f"steer_run_{choice}")
        if len(pick) > 1
        else next(iter(pick))
    )
    run = next(r for r in group if r.run_id == run_id)
    with st.expander("Settings and provenance of this run"):
        st.dataframe(
            [{"field": k, "value": common.fmt(getattr(run, k))} for k in _FIELDS],
            hide_index=True,
            key="steer_fields",
        )
    samples = common.q("steering_samples", run_id)
    if not samples:
        st.caption("This run stored no samples.")
    for s in samples[:50]:
        st.html(f"<b>prompt</b> <span style='white-space:pre-wrap'>{visible(s.prompt)}</span>")
        left, right = st.columns(2)
        left.html(
            f"<div style='white-space:pre-wrap'><b>clean</b><br>{visible(s.clean_text)}</div>"
        )
        right.html(
            f"<div style='white-space:pre-wrap'><b>{_METHOD.get(run.method, 'steered')}</b>"
            f"<br>{visible(s.steered_text)}</div>"
        )
