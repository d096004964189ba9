"""Steering: past steering runs from the file (settings and metrics, clean and steered text
side by side); an empty file says how to make some. Below them the live playground
(`app.views.playground`)."""

from __future__ import annotations

import streamlit as st

from app import common
from app.tokens import visible

EMPTY = (
    "No steering runs in this results file yet. Steer the model with a feature using "
    "`saelab steer --db FILE --sae DIR --feature N --strength S --prompt TEXT`; runs will show here."
)
_TEXT = {
    "clean": ("clean", "clean_text", "baseline"),
    "steered": ("steered", "steered_text", "output"),
}


def render() -> None:
    from app.views import playground

    st.title("Steering")
    _past_runs()
    playground.render()


def _past_runs() -> None:
    runs = common.q("rows_of", "steering_runs", None)
    if not runs:
        st.info(EMPTY)
        return
    runs = sorted(
        runs, key=lambda r: (r.get("method") == "none", str(r.get("created_at"))), reverse=False
    )
    id_col = next((c for c in ("run_id", "steering_id", "id") if c in runs[0]), next(iter(runs[0])))
    ids = [r[id_col] for r in runs]
    labels = {r[id_col]: _label(r, id_col) for r in runs}
    choice = st.selectbox("Run", ids, format_func=labels.get, key="steer_pick")
    run = next(r for r in runs if r[id_col] == choice)
    st.dataframe(
        [
            {"field": k, "value": common.fmt(v)}
            for k, v in run.items()
            if not isinstance(v, (list, dict))
        ],
        hide_index=True,
        key="steer_fields",
    )
    samples = common.q("rows_of", "steering_samples", {id_col: choice})
    if not samples:
        st.caption("This run stored no samples.")
    for s in samples[:50]:
        clean = next((s[c] for c in _TEXT["clean"] if c in s), None)
        steered = next((s[c] for c in _TEXT["steered"] if c in s), None)
        prompt = s.get("prompt")
        if prompt is not None:
            st.html(
                f"<b>prompt</b> <span style='white-space:pre-wrap'>{visible(str(prompt))}</span>"
            )
        left, right = st.columns(2)
        left.html(
            f"<div style='white-space:pre-wrap'><b>clean</b><br>{visible(str(clean or ''))}</div>"
        )
        right.html(
            f"<div style='white-space:pre-wrap'><b>steered</b><br>{visible(str(steered or ''))}</div>"
        )


def _label(r: dict, id_col: str) -> str:
    bits = [str(r[id_col])[:12]] + [
        f"{k} {r[k]}" for k in ("feature", "strength", "sae_id") if r.get(k) is not None
    ]
    return " · ".join(bits)
