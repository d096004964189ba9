"""Steering: past steering runs from the file (settings and metrics, clean and steered text
side by side); an empty file says how to make some. Below them the live playground
(`app.views.playground`)."""

from __future__ import annotations

import streamlit as st

from saelab.app import common
from saelab.app.tokens import visible

TITLE = "Steering"
ICON = ":material/tune:"

EMPTY = (
    "No steering runs in this results file yet. Steer the model with a feature using "
    "`saelab steer --db FILE --sae DIR --feature N --strength S --prompt TEXT`; runs will show here."
)
_FIELDS = (
    "method", "mode", "strength", "unit", "features", "kl", "feature_act", "concept",
    "concept_kind", "perplexity", "target_kl", "positions", "hook", "model", "sae_id",
    "sweep_id", "run_id", "created_at",
)  # fmt: skip


def render() -> None:
    from saelab.app.views import playground

    st.title("Steering")
    _past_runs()
    playground.render()


def _past_runs() -> None:
    runs = common.q("steering_runs")
    if not runs:
        st.info(EMPTY)
        return
    runs = sorted(runs, key=lambda r: (r.method == "none", str(r.created_at)))
    labels = {r.run_id: _label(r) for r in runs}
    choice = st.selectbox("Run", list(labels), format_func=labels.get, key="steer_pick")
    run = next(r for r in runs if r.run_id == choice)
    st.dataframe(
        [{"field": k, "value": common.fmt(getattr(run, k))} for k in _FIELDS],
        hide_index=True,
        key="steer_fields",
    )
    samples = common.q("steering_samples", choice)
    if not samples:
        st.caption("This run stored no samples.")
    for s in samples[:50]:
        st.html(f"<b>prompt</b> <span style='white-space:pre-wrap'>{visible(s.prompt)}</span>")
        left, right = st.columns(2)
        left.html(
            f"<div style='white-space:pre-wrap'><b>clean</b><br>{visible(s.clean_text)}</div>"
        )
        right.html(
            f"<div style='white-space:pre-wrap'><b>steered</b><br>{visible(s.steered_text)}</div>"
        )


def _label(r) -> str:
    strength = "" if r.strength is None else f" · strength {r.strength:.3g}"
    return f"{r.run_id[:12]} · {r.method}{strength} · features {', '.join(map(str, r.features))}"
