"""The results file for notebooks: pandas frames, plotly figures and inline feature dashboards.

Everything reads through `resultstore` (read-only connections); nothing here writes.
Corpus text shown as HTML is escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelab import resultstore as results
from saelab.base.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


class Results:
    """One results file (DuckDB): `saes()`, `metrics()`, `scores()` as pandas frames,
    `frontier()` as a plotly figure, `feature(sae, i)` as an inline dashboard."""

    def __init__(self, db: str | Path) -> None:
        if not isinstance(db, (str, Path)):
            raise UserError(f"give the results file as a path, got {db!r}")
        self.store = results.ResultsStore(db, mode="read")
        self.db = self.store.path

    def saes(self) -> pd.DataFrame:
        """One row per SAE: id, name, architecture, widths, hook, model, path."""
        import pandas as pd

        return pd.DataFrame([r.as_dict() for r in results.list_saes(self.store)])

    def metrics(self, long: bool = False) -> pd.DataFrame:
        """One row per evaluated SAE with every metric as a column (core and loss win name
        clashes); `long=True`: one row per (SAE, eval, metric)."""
        import pandas as pd

        if not isinstance(long, bool):
            raise UserError(f"`long` is True or False, got {long!r}")
        if long:
            return pd.DataFrame(results.metrics_long(self.store))
        from saelab.evaluation.compare import comparison_rows

        return pd.DataFrame(comparison_rows(self.store))

    def features(self, sae: str) -> pd.DataFrame:
        """Per-latent statistics of one SAE (density, max and mean activation, dead, dense)."""
        import pandas as pd

        row = results.find_sae(self.store, sae)
        stats = results.feature_stats(self.store, row.sae_id)
        return pd.DataFrame([s.as_dict() for _, s in sorted(stats.items())])

    def scores(self, sae: str | None = None) -> pd.DataFrame:
        """Auto-interp scores with their explanations (one row per latent, explainer, scorer)."""
        import pandas as pd

        sae_id = results.find_sae(self.store, sae).sae_id if sae else None
        return pd.DataFrame(results.interp_scores(self.store, sae_id))

    def frontier(self, frontiers: Any = None) -> go.Figure:
        """The variant frontiers (FVU vs L0, CE loss score vs L0, dead vs width), plotly."""
        from saelab.evaluation.compare import FRONTIERS, comparison_rows, frontier_figure

        if frontiers is not None:
            _check_frontiers(frontiers)
        return frontier_figure(comparison_rows(self.store), frontiers or FRONTIERS)

    def feature(self, sae: str, feature: int) -> FeatureView:
        """One latent's dashboard (examples, histograms, logit effects, explanations)."""
        row = results.find_sae(self.store, sae)
        feature = _latent(feature, row)
        return FeatureView(results.feature_dashboard(self.store, row.sae_id, feature))

    def nearest(self, sae: str, feature: int, k: int = 5) -> pd.DataFrame:
        """The k latents whose decoder directions are closest (cosine) to this one's (from the
        registered checkpoint, its weights checked against the registered hash)."""
        import pandas as pd
        import torch

        from saelab.sae.checkpoint import WEIGHTS_FILE, load_sae

        row = results.find_sae(self.store, sae)
        feature = _latent(feature, row)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"`k` is how many neighbours to list: a whole number >= 1, got {k!r}")
        w = load_sae(results.verified_folder(row, WEIGHTS_FILE)).W_dec.detach()
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = w @ w[feature]
        cos[feature] = -float("inf")
        top = torch.topk(cos, min(k, w.shape[0] - 1))
        return pd.DataFrame(
            {"feature": top.indices.tolist(), "cosine": [round(v, 4) for v in top.values.tolist()]}
        )


def _latent(feature: Any, row: results.SAERow) -> int:
    """`feature` as a latent index of the SAE `row`, or a UserError saying what is wrong."""
    import numbers

    if isinstance(feature, bool) or not isinstance(feature, numbers.Integral):
        raise UserError(f"a latent is a whole number, got {feature!r}")
    if not 0 <= int(feature) < row.d_sae:
        raise UserError(
            f"latent {feature} is out of range for SAE {row.name} (0 … {row.d_sae - 1})"
        )
    return int(feature)


def _check_frontiers(frontiers: Any) -> None:
    ok = isinstance(frontiers, (list, tuple)) and all(
        isinstance(f, (list, tuple)) and len(f) == 3 and all(isinstance(x, str) for x in f)
        for f in frontiers
    )
    if not ok or not frontiers:
        raise UserError(
            "`frontiers` is a list of (x metric, y metric, title) triples, such as "
            f"[('l0', 'fvu', 'FVU vs L0')], got {frontiers!r}"
        )


EXAMPLE_KINDS = ("top", "quantile", "random", "nonactivating")
"""The kinds of example windows the features eval stores."""


@dataclass
class FeatureView:
    """One latent's dashboard; displays itself in a notebook (`_repr_html_`)."""

    data: results.FeatureDashboard

    @property
    def sae(self) -> str:
        return self.data.sae.name

    @property
    def feature(self) -> int:
        return self.data.feature

    @property
    def stats(self) -> results.FeatureRow:
        return self.data.stats

    @property
    def vocab(self) -> dict[int, str]:
        return self.data.tokens

    def examples_html(self, kind: str = "top", n: int = 5) -> str:
        """Example windows with each token's background shaded by its activation (escaped)."""
        if kind not in EXAMPLE_KINDS:
            raise UserError(f"unknown example kind {kind!r}: choose {', '.join(EXAMPLE_KINDS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"`n` is how many windows to show: a whole number >= 0, got {n!r}")
        rows = [e for e in self.data.examples if e.kind == kind][:n]
        peak = max((max(e.acts) for e in rows if e.acts), default=0.0) or 1.0
        lines = []
        for e in rows:
            spans = []
            for tok, act in zip(e.tokens, e.acts, strict=True):
                text = html.escape(self.vocab.get(tok, f"<{tok}>")).replace("\n", "⏎")
                alpha = max(0.0, min(1.0, act / peak))
                title = f"{act:.3g}"
                spans.append(
                    f'<span title="{title}" style="background: rgba(255,140,0,{alpha:.2f})">'
                    f"{text}</span>"
                )
            lines.append(
                f'<div style="font-family: monospace; white-space: pre-wrap">'
                f"<b>{e.activation:.3g}</b> {''.join(spans)}</div>"
            )
        return "\n".join(lines)

    def histogram(self) -> go.Figure:
        """Histogram of the latent's non-zero activations (log-spaced bins), plotly."""
        import plotly.graph_objects as go

        hist = next((h for h in self.data.histograms if h.kind == "activation"), None)
        fig = go.Figure()
        if hist is not None:
            edges = hist.bin_edges
            mids = [(a * b) ** 0.5 for a, b in zip(edges[:-1], edges[1:], strict=True)]
            fig.add_bar(x=mids, y=hist.counts, name="activations")
            fig.update_xaxes(type="log", title_text="activation")
        fig.update_layout(
            title=f"{self.sae} latent {self.feature}: activations", height=320, width=520
        )
        return fig

    def logit_effects(self) -> go.Figure:
        """The tokens this latent's decoder direction promotes and suppresses, plotly."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for side, colour in (("top", "#2ca02c"), ("bottom", "#d62728")):
            rows = [r for r in self.data.logits if r.side == side]
            fig.add_bar(
                x=[r.value for r in rows],
                y=[repr(self.vocab.get(r.token_id, str(r.token_id))) for r in rows],
                orientation="h",
                name=side,
                marker_color=colour,
            )
        fig.update_layout(
            title=f"{self.sae} latent {self.feature}: logit effects", height=420, width=520
        )
        return fig

    def explanations(self) -> pd.DataFrame:
        """Explanations and scores (with their intervals) of this latent, pandas."""
        import pandas as pd

        rows = []
        for item in self.data.explanations:
            e = item.explanation
            base = {"explainer": e.explainer, "explanation": e.explanation}
            for s in item.scores or [None]:
                rows.append({
                    **base, "scorer": s and s.scorer, "value": s and s.value,
                    "ci_low": s and s.ci_low, "ci_high": s and s.ci_high,
                    "status": s.status if s else e.status,
                })  # fmt: skip
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        s = self.stats
        head = (
            f"<h4>{html.escape(self.sae)} latent {self.feature}</h4>"
            f"<p>density {s.density:.3g}, max activation {s.max_act or 0:.3g}</p>"
        )
        return head + self.examples_html()
