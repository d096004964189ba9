"""Search: latents by explanation text, by a token that activates them, or by density and
score ranges, in every SAE of the file at once (the default) or in the picked one; every result
names its SAE and opens its feature page."""

from __future__ import annotations

import streamlit as st

from saelab.app import common

TITLE = "Search"
ICON = ":material/search:"

ALL = "all"
"""The scope choice that searches every SAE of the file."""
MAX_SHOWN = 100
"""Results listed (strongest first)."""


def _linked_input(label: str, param: str, key: str) -> str:
    """A text box in step with a query parameter, so a search is a link (`?text=plural`)."""
    value = st.text_input(label, value=st.query_params.get(param, ""), key=key)
    if value:
        st.query_params[param] = value
    elif param in st.query_params:
        del st.query_params[param]
    return value


def render() -> None:
    saes = common.q("list_saes")
    sae = common.pick_sae(saes, key="search")
    if sae is None:
        return
    st.title("Search features")
    scope = st.radio(
        "Search in",
        [ALL, sae.sae_id],
        format_func=lambda s: f"all SAEs ({len(saes)})" if s == ALL else f"{sae.name} only",
        horizontal=True,
        key="search_scope",
    )
    chosen = saes if scope == ALL else [sae]
    where = None if scope == ALL else sae.sae_id
    by_text, by_token, by_range = st.tabs(
        ["Explanation text", "Activating token", "Density / score"]
    )
    with by_text:
        text = _linked_input("Explanation contains", "text", key="search_text")
        if text:
            _results(
                common.q("search_explanations", where, text),
                "text",
                ["explainer", "explanation", "best_score", "density"],
            )
    with by_token:
        token = _linked_input(
            "Token (e.g. ' Paris'; a leading space is tried both ways)", "token", key="search_token"
        )
        if token:
            _token_results(chosen, token)
    with by_range:
        lo, hi = st.slider("log10 density", -7.0, 0.0, (-7.0, 0.0), step=0.25, key="search_density")
        scorers = sorted({name for s in chosen for name in common.q("scorer_names", s.sae_id)})
        scorer = st.selectbox("Score", ["(any)", *scorers], key="search_scorer")
        score = None
        if scorer != "(any)":
            score = st.slider("Score range", 0.0, 1.0, (0.0, 1.0), step=0.05, key="search_score")
        if st.button("Search", key="search_range"):
            st.session_state["search_range_on"] = True
        if st.session_state.get("search_range_on"):
            rows = common.q(
                "search_ranges", where, (lo, hi), score, None if scorer == "(any)" else scorer
            )
            _results(rows, "range", ["density", "max_act", "scorer", "score", "explanation"])


def _token_results(saes: list, token: str) -> None:
    """Token ids are a model's: look the token up once per model among the SAEs searched."""
    by_model: dict[str, list[str]] = {}
    for s in saes:
        by_model.setdefault(s.model_sha256 or "", []).append(s.sae_id)
    rows, found = [], []
    for sha, sae_ids in by_model.items():
        ids = common.q("token_ids_for", sha, token)
        if ids:
            found += ids
            rows += common.q("search_token", sae_ids, ids)
    if not found:
        st.info("No vocabulary entry is exactly that token; try with or without a leading space.")
        return
    st.caption(f"token ids {', '.join(map(str, sorted(set(found))))}")
    rows.sort(key=lambda r: -r["max_on_token"])
    rows = rows[:MAX_SHOWN]
    for sae_id in {r["sae_id"] for r in rows}:
        features = [r["feature"] for r in rows if r["sae_id"] == sae_id]
        texts = common.q("explanation_texts", sae_id, features)
        for r in rows:
            if r["sae_id"] == sae_id and r["feature"] in texts:
                r["explanation"] = texts[r["feature"]]
    _results(rows, "token", ["max_on_token", "hits", "explanation"])


def _results(rows: list[dict], key: str, columns: list[str]) -> None:
    if not rows:
        st.info("No feature matches.")
        return
    n_saes = len({r["sae_id"] for r in rows})
    st.caption(f"{len(rows)} features (strongest first) from {n_saes} SAE(s)")
    for i, r in enumerate(rows[:MAX_SHOWN]):
        cols = st.columns([1, 1.3, 5])
        with cols[0]:
            common.feature_button(r["sae_id"], r["feature"], key=f"{key}{i}")
        cols[1].text(r["name"])
        cols[2].text(" · ".join(f"{c}: {common.fmt(r.get(c))}" for c in columns if c in r))
