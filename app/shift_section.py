"""The SHIFT section of the Circuits page: stored SHIFT runs, each with the classifiers'
profession and gender accuracies (95% intervals) before and after ablation beside the paper's
baselines, and the ablated latents with their explanations, linked to the Feature page.

`accuracy_rows` and `feature_rows` build the tables without Streamlit (tested); `render` draws
them. Everything from the store is shown as dataframe cells (plain text) or escaped HTML."""

from __future__ import annotations

import html
from urllib.parse import quote

from saelab.resultstore import ShiftAccuracyRow, ShiftFeatureRow, ShiftRunRow
from saelab.resultstore.shift import METHOD_LABELS as LABELS

EMPTY = (
    "No SHIFT runs in this results file yet. Run one with `saelab shift --sae DIR... --db FILE`; "
    "it will show here."
)


def run_label(run: ShiftRunRow) -> str:
    pair = " vs ".join(run.professions or [])
    return f"{run.run_id[:12]} · {pair} · judge {run.judge} · {run.n_ablated} ablated"


def accuracy_rows(rows: list[ShiftAccuracyRow]) -> list[dict]:
    """One row per classifier: profession and gender accuracy with their intervals."""
    by = {(r.method, r.label): r for r in rows}
    order = [m for m in LABELS if (m, "profession") in by]
    order += sorted({m for m, _ in by} - set(order))
    out = []
    for m in order:
        row = {"classifier": LABELS.get(m, m)}
        for label in ("profession", "gender"):
            r = by.get((m, label))
            row["ablated"] = r.n_ablated if r else row.get("ablated")
            row[f"{label} accuracy"] = None if r is None else round(r.accuracy, 3)
            row[f"{label} 95% CI"] = "" if r is None else f"{r.ci_low:.3f} – {r.ci_high:.3f}"
        out.append(row)
    return out


def feature_url(sae_id: str, feature: int) -> str:
    return f"./feature?sae={quote(str(sae_id), safe='')}&feature={int(feature)}"


def feature_rows(features: list[ShiftFeatureRow], explanations: dict) -> list[dict]:
    """The ablated latents, largest effect first; `explanations`: (sae_id, latent) → text."""
    out = []
    for f in features:
        stored = explanations.get((f.sae_id, f.feature))
        out.append({
            "hook": f.hook, "latent": f.feature, "effect": round(f.effect, 4),
            "r(gender)": round(f.corr_gender, 3), "r(profession)": round(f.corr_profession, 3),
            "judge": f.judge,
            "explanation": stored or f.description or "",  # description: top tokens
            "LLM answer": f.answer or "",
            "feature page": feature_url(f.sae_id, f.feature) if f.sae_id else None,
        })  # fmt: skip
    return out


def render() -> None:
    import streamlit as st

    from saelab.app import common

    st.subheader("SHIFT: removing a classifier's reliance on gender")
    runs = common.q("shift_runs")
    if not runs:
        st.info(EMPTY)
        return
    labels = {r.run_id: run_label(r) for r in runs}
    choice = st.selectbox("SHIFT run", list(labels), format_func=labels.get, key="shift_pick")
    run = next(r for r in runs if r.run_id == choice)
    facts = (
        f"probe at <b>{html.escape(run.probe_hook)}</b>, SAEs at "
        f"{html.escape(', '.join(run.hooks or []))}; {run.n_train} biased training texts, "
        f"{run.n_test} balanced test texts ({html.escape(run.data_source)}); judge "
        f"<b>{html.escape(run.judge)}</b>; {run.n_ablated} of {run.n_candidates} candidate "
        f"latents ablated (zeroed, error kept); intervals: {html.escape(run.interval)}"
    )
    st.html(f'<div style="color:#555">{facts}</div>')
    st.caption(
        "Gender accuracy is the same classifier's predictions scored against gender on the "
        "balanced test split: 0.5 means it no longer tracks gender."
    )
    st.dataframe(accuracy_rows(common.q("shift_accuracies", choice)), hide_index=True,
                 key="shift_accuracies")  # fmt: skip
    ablated = common.q("shift_features", choice, "latent", True)
    explanations: dict = {}
    for sae_id in {f.sae_id for f in ablated if f.sae_id}:
        feats = [f.feature for f in ablated if f.sae_id == sae_id]
        for feat, text in common.q("explanation_texts", sae_id, feats).items():
            explanations[(sae_id, feat)] = text
    st.markdown("**Ablated latents**")
    st.dataframe(
        feature_rows(ablated, explanations),
        hide_index=True,
        key="shift_features",
        column_config={
            "explanation": st.column_config.TextColumn(width="large"),
            "feature page": st.column_config.LinkColumn(
                help="Open the latent's Feature page", display_text="open"
            ),
        },
    )
