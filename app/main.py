"""The saelab web app (Streamlit): `streamlit run app/main.py` with SAELAB_APP_DB set, or
`saelab app --db FILE`. Pages live in `app/views/`; this script wires navigation and turns
errors (missing, busy, older files) into messages on the page."""

from __future__ import annotations

import streamlit as st

from app import common, db
from app.views import circuits, compare, feature, saes, search, steering

RENDER = {
    "saes": (saes.render, "SAEs", ":material/table_chart:"),
    "feature": (feature.render, "Feature", ":material/bubble_chart:"),
    "search": (search.render, "Search", ":material/search:"),
    "circuits": (circuits.render, "Circuits", ":material/account_tree:"),
    "steering": (steering.render, "Steering", ":material/tune:"),
    "compare": (compare.render, "Compare", ":material/compare:"),
}


def guarded(render) -> None:
    """Run a page; a missing, busy or incompatible file becomes a message, not a traceback."""
    try:
        common.apply_goto()
        render()
    except db.BusyError as err:
        st.warning(f"Busy, retry: {err}")
        st.button("Retry", key="busy_retry")
    except db.OlderSchemaError as err:
        st.error(f"{err}: run `saelab app --db FILE --migrate` once, then reload this page.")
    except db.UserError as err:
        st.error(str(err))
    finally:
        common.close_reader()


def run() -> None:
    st.set_page_config(page_title="saelab", layout="wide")
    pages = {
        name: st.Page(
            lambda fn=fn: guarded(fn), title=title, icon=icon, url_path=name, default=name == "saes"
        )
        for name, (fn, title, icon) in RENDER.items()
    }
    common.PAGES.clear()
    common.PAGES.update(pages)
    st.navigation(list(pages.values())).run()


def run_page(name: str) -> None:
    """Render one page without navigation (for AppTest and the benchmark)."""
    guarded(RENDER[name][0])


if __name__ == "__main__":
    run()
