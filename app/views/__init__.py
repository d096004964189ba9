"""The app's pages, one module each: `TITLE`, `ICON` and `render()`. `PAGES` lists them in the
order the sidebar shows them; adding a page is one file here and one line in `PAGES`."""

PAGES = (
    "saelab.app.views.saes",
    "saelab.app.views.feature",
    "saelab.app.views.search",
    "saelab.app.views.circuits",
    "saelab.app.views.graph",
    "saelab.app.views.steering",
    "saelab.app.views.compare",
)
"""The pages (module paths; the first is the landing page)."""
