"""Streamlit helpers every page shares: the session's reader, cached queries, the SAE picker,
URL query parameters, and links to the feature page."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from saelab.app import db
from saelab.resultstore import SAERow

_READER = "_saelab_reader"
_GOTO = "_saelab_goto"
PAGES: dict = {}
"""The current run's `st.Page` objects by name (set by `app.main.run`)."""


def db_path() -> str:
    path = os.environ.get(db.DB_ENV, "")
    if not path:
        raise db.UserError("no results database given; start the app with `saelab app --db FILE`")
    return path


def reader() -> db.Reader:
    r = st.session_state.get(_READER)
    path = db_path()
    if r is None or r.path != path:
        r = db.Reader(path)
        st.session_state[_READER] = r
    return r


def close_reader() -> None:
    r = st.session_state.get(_READER)
    if r is not None:
        r.close()


@st.cache_data(show_spinner=False, max_entries=64)
def _schema(path: str, stamp: tuple) -> int:
    return db.schema_version(reader())


def file_key() -> tuple:
    """(path, stamp, schema version): the cache key of every query."""
    path = db_path()
    stamp = db.stamp(path)
    if stamp[0] == 0:
        db.open_store(path)  # raises the "no results database" message
    return (path, stamp, _schema(path, stamp))


@st.cache_data(show_spinner=False, max_entries=4096)
def _cached(key: tuple, name: str, args: tuple) -> Any:
    return db.call(reader(), name, *args)


def q(name: str, *args: Any) -> Any:
    """The results store's read `saelab.resultstore.<name>(store, *args)`, cached by the
    file's state."""
    return _cached(file_key(), name, tuple(args))


# -- selection in the URL --------------------------------------------------------------------


def apply_goto() -> None:
    """Carry query parameters set by `goto` across a page switch."""
    params = st.session_state.pop(_GOTO, None)
    if params:
        for k, v in params.items():
            st.query_params[k] = str(v)


def goto(page: str, **params: Any) -> None:
    """Open another page with these query parameters (SAE, feature)."""
    params = {k: str(v) for k, v in params.items()}
    if page in PAGES:
        st.switch_page(PAGES[page], query_params=params)
    st.session_state[_GOTO] = params  # a single page (tests, benchmark): stay, new parameters
    st.rerun()


def param_int(name: str) -> int | None:
    value = st.query_params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def bad_param(name: str, value: str, why: str, instead: str) -> None:
    """The one-line notice of a link whose parameter cannot be followed (never a silent
    substitute): what was asked, why not, and what the page shows instead."""
    st.warning(f"`?{name}={value}` {why}; showing {instead} instead.", icon=":material/link_off:")


def default_sae_id(saes: list[SAERow]) -> str:
    """The SAE a page opens when none is named: one with feature statistics, the most
    explained of those (then the first by name), so a first click lands on a page with data."""
    overview = {r["sae_id"]: r for r in q("sae_overview")}

    def rank(sae: SAERow) -> tuple:
        row = overview.get(sae.sae_id, {})
        return (
            -bool(row.get("features_stored")),
            -(row.get("explained") or 0),
            -bool(row.get("evals")),
        )

    return min(saes, key=rank).sae_id  # min keeps the name order among equals


def default_feature(sae_id: str) -> int:
    """A live latent with examples (explained ones first), or 0 when the SAE has none."""
    feature = q("default_feature", sae_id)
    return 0 if feature is None else feature


def feature_param(sae: SAERow) -> int:
    """The `feature` query parameter when it names a latent of `sae`; otherwise (absent, not a
    number, out of range) the default latent, with a notice for a bad one."""
    value = st.query_params.get("feature")
    if value is None or value == "":
        return default_feature(sae.sae_id)
    try:
        feature = int(value)
    except ValueError:
        feature = None
    if feature is None or not 0 <= feature < sae.d_sae:
        fallback = default_feature(sae.sae_id)
        bad_param(
            "feature", value, f"is not a latent of {sae.name} (0 to {sae.d_sae - 1})",
            f"latent {fallback}",
        )  # fmt: skip
        return fallback
    return feature


def pick_sae(saes: list[SAERow], key: str = "sae") -> SAERow | None:
    """The SAE picker (sidebar), in step with the `sae` query parameter (by id or name); no
    parameter opens the default SAE, an unknown one a notice and the default."""
    if not saes:
        st.info("This results file holds no SAE yet. Run `saelab eval` (or `saelab demo`).")
        return None
    ids = [s.sae_id for s in saes]
    asked = st.query_params.get("sae")
    wanted = asked or st.session_state.get("_saelab_sae")
    matches = [s for s in saes if wanted in (s.sae_id, s.name)]
    index = ids.index(matches[0].sae_id if matches else default_sae_id(saes))
    if asked and not matches:
        bad_param("sae", asked, "names no SAE of this results file", f"SAE {saes[index].name}")
    labels = {s.sae_id: f"{s.name} · {s.architecture} · {s.d_sae}" for s in saes}
    choice = st.sidebar.selectbox(
        "SAE", ids, index=index, format_func=lambda i: labels[i], key=f"pick_{key}"
    )
    if st.query_params.get("sae") != choice:
        st.query_params["sae"] = choice
    st.session_state["_saelab_sae"] = choice  # kept when the sidebar opens another page
    return next(s for s in saes if s.sae_id == choice)


def feature_button(sae_id: str, feature: int, label: str | None = None, key: str = "") -> None:
    if st.button(label or f"feature {feature}", key=f"open_{key}_{sae_id}_{feature}"):
        goto("feature", sae=sae_id, feature=feature)


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
