"""Compare every SAE in the results store: one table and the variant frontiers as plotly HTML."""

from __future__ import annotations

from pathlib import Path

from saelab import resultstore as results
from saelab.base.fs import check_output_file, disk_error

COLUMNS = (
    "l0",
    "fvu",
    "explained_variance",
    "cosine",
    "ce_loss_score",
    "kl_score",
    "delta_loss",
    "dead_fraction",
    "dead_fraction_tokens",
    "dense_fraction",
)
"""The metric columns of the comparison table (`saelab compare`, the app's SAEs page)."""
FRONTIERS = (
    ("l0", "fvu", "FVU vs L0 (lower left is better)"),
    ("l0", "ce_loss_score", "CE loss score vs L0"),
    ("d_sae", "dead_fraction", "Dead fraction vs width"),
)
"""(x, y, title) of each frontier plot."""


def comparison_rows(store: results.ResultsStore) -> list[dict]:
    """The results store's overview (`saelab.resultstore.sae_overview`: identity, every metric with
    core and loss winning ties, latent counts) of every evaluated SAE, ordered by architecture,
    width and name."""
    rows = [row for row in results.sae_overview(store) if row["evals"]]
    return sorted(rows, key=lambda row: (row["architecture"], row["d_sae"], row["name"]))


def format_table(rows: list[dict]) -> str:
    head = ["name", "architecture", "d_sae", *COLUMNS]
    cells = [[_fmt(row.get(c)) for c in head] for row in rows]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)
    ]

    def line(values):
        return "  ".join(
            v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
        )

    return "\n".join([line(head), *(line(c) for c in cells)])


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def check_html_path(path: str | Path) -> Path:
    """Refuse an HTML output that is a folder, sits under a file, or lies inside an
    activation store, before any work."""
    from saelab.activations.store import refuse_inside_store

    path = check_output_file(path, "the HTML file", "compare.html")
    refuse_inside_store(str(path), "the HTML file")
    return path


def frontier_html(rows: list[dict], path: str | Path) -> Path:
    """The frontiers (`frontier_figure`) as a self-contained HTML file."""
    path = check_html_path(path)
    fig = frontier_figure(rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(str(path), include_plotlyjs=True)
    except OSError as err:
        raise disk_error(err, str(path)) from None
    return path


def frontier_figure(rows: list[dict], frontiers=FRONTIERS):
    """Scatter plots of the frontiers, one colour per architecture, hover shows the SAE name
    (a plotly figure: shown inline in a notebook, or written with `frontier_html`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(frontiers), subplot_titles=[t for *_, t in frontiers])
    archs = sorted({r["architecture"] for r in rows})
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for col, (xkey, ykey, _) in enumerate(frontiers, start=1):
        for i, arch in enumerate(archs):
            pts = [
                r
                for r in rows
                if r["architecture"] == arch and r.get(xkey) is not None and r.get(ykey) is not None
            ]
            fig.add_trace(
                go.Scatter(
                    x=[r[xkey] for r in pts],
                    y=[r[ykey] for r in pts],
                    mode="markers",
                    name=arch,
                    text=[r["name"] for r in pts],
                    hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>",
                    marker={"color": palette[i % len(palette)], "size": 9},
                    legendgroup=arch,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(
            title_text=xkey, row=1, col=col, type="log" if xkey == "d_sae" else "linear"
        )
        fig.update_yaxes(title_text=ykey, row=1, col=col)
    fig.update_layout(title="saelab: SAE variants", height=460, width=420 * len(frontiers))
    return fig
