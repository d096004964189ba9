"""Search: latents by explanation text, by a token that activates them, or by density and
score ranges; every result opens its feature page."""

from __future__ import annotations

import streamlit as st

from saelab.app import common

TITLE = "Search"
ICON = ":material/search:"


def render() -> None:
    sae = common.pick_sae(common.q("list_saes"), key="search")
    if sae is None:
        return
    sae_id = sae.sae_id
    st.title("Search features")
    by_text, by_token, by_range = st.tabs(
        ["Explanation text", "Activating token", "Density / score"]
    )
    with by_text:
        text = st.text_input("Explanation contains", key="search_text")
        if text:
            _results(
                sae_id,
                common.q("search_explanations", sae_id, text),
                "text",
                ["explainer", "explanation", "best_score", "density"],
            )
    with by_token:
        token = st.text_input(
            "Token (e.g. ' Paris'; a leading space is tried both ways)", key="search_token"
        )
        if token:
            ids = common.q("token_ids_for", sae.model_sha256 or "", token)
            if not ids:
                st.info(
                    "No vocabulary entry is exactly that token; try with or without a leading space."
                )
            else:
                st.caption(f"token ids {', '.join(map(str, ids))}")
                _results(
                    sae_id, common.q("search_token", sae_id, ids), "token", ["max_on_token", "hits"]
                )
    with by_range:
        lo, hi = st.slider("log10 density", -7.0, 0.0, (-7.0, 0.0), step=0.25, key="search_density")
        scorers = common.q("scorer_names", sae_id)
        scorer = st.selectbox("Score", ["(any)", *scorers], key="search_scorer")
        score = None
        if scorer != "(any)":
            score = st.slider("Score range", 0.0, 1.0, (0.0, 1.0), step=0.05, key="search_score")
        if st.button("Search", key="search_range"):
            st.session_state["search_range_on"] = True
        if st.session_state.get("search_range_on"):
            rows = common.q(
                "search_ranges", sae_id, (lo, hi), score, None if scorer == "(any)" else scorer
            )
            _results(
                sae_id, rows, "range", ["density", "max_act", "scorer", "score", "explanation"]
            )


def _results(sae_id: str, rows: list[dict], key: str, columns: list[str]) -> None:
    if not rows:
        st.info("No feature matches.")
        return
    st.caption(f"{len(rows)} features (strongest first)")
    for i, r in enumerate(rows[:100]):
        cols = st.columns([1, 5])
        with cols[0]:
            common.feature_button(sae_id, r["feature"], key=f"{key}{i}")
        cols[1].text(" · ".join(f"{c}: {common.fmt(r.get(c))}" for c in columns if c in r))
