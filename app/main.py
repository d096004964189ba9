"""The saelab web app (Streamlit): `streamlit run app/main.py` with SAELAB_APP_DB set, or
`saelab app --db FILE`. Pages live in `app/views/` (listed in `views.PAGES`); this script wires
navigation and turns errors (missing, busy, older files) into messages on the page."""

from __future__ import annotations

import importlib

import streamlit as st

from saelab.app import common, db
from saelab.app.views import PAGES

# page name (its module's) -> (render, title, icon). No bare strings in this file: Streamlit
# runs it as a script and would write them on every page ("magic").
RENDER = {
    path.rsplit(".", 1)[1]: (module.render, module.TITLE, module.ICON)
    for path in PAGES
    for module in [importlib.import_module(path)]
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
    landing = next(iter(RENDER))
    pages = {
        name: st.Page(
            lambda fn=fn: guarded(fn),
            title=title,
            icon=icon,
            url_path=f"{name}-home" if name == landing else name,
            default=name == landing,
        )
        for name, (fn, title, icon) in RENDER.items()
    }
    # The landing page is served at "/"; this hidden twin answers its own name too (`/saes`),
    # so every page has a deep link of the same form.
    fn, title, icon = RENDER[landing]
    alias = st.Page(
        lambda: guarded(fn), title=title, icon=icon, url_path=landing, visibility="hidden"
    )
    common.PAGES.clear()
    common.PAGES.update(pages)
    st.navigation([*pages.values(), alias]).run()


def run_page(name: str) -> None:
    """Render one page without navigation (for AppTest and the benchmark)."""
    guarded(RENDER[name][0])


if __name__ == "__main__":
    run()
