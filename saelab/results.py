"""The results file for notebooks: pandas frames, plotly figures and inline feature dashboards.

Everything reads through `resultstore` (read-only connections); nothing here writes.
Corpus text shown as HTML is escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import resultstore as results


class Results:
    """One results file (DuckDB): `saes()`, `metrics()`, `scores()` as pandas frames,
    `frontier()` as a plotly figure, `feature(sae, i)` as an inline dashboard."""

    def __init__(self, db: str | Path) -> None:
        self.db = str(db)
        if not Path(self.db).is_file():
            from saelab_base.errors import UserError

            raise UserError(f"no results file at {self.db}; evaluate an SAE into it first")

    def saes(self):
        """One row per SAE: id, name, architecture, widths, hook, model, path."""
        import pandas as pd

        return pd.DataFrame(results.list_saes(self.db))

    def metrics(self, long: bool = False):
        """One row per SAE with every metric as a column (core and loss win name clashes);
        `long=True`: one row per (SAE, eval, metric)."""
        import pandas as pd

        if long:
            return pd.DataFrame(results.metrics_table(self.db))
        from evaluation.compare import comparison_rows

        return pd.DataFrame(comparison_rows(self.db))

    def features(self, sae: str):
        """Per-latent statistics of one SAE (density, max and mean activation, dead, dense)."""
        import pandas as pd

        with results.connect(self.db, read_only=True) as con:
            row = results.find_sae(con, sae)
            stats = results.feature_stats(con, row["sae_id"], list(range(row["d_sae"])))
        return pd.DataFrame([{"feature": f, **s} for f, s in sorted(stats.items())])

    def scores(self, sae: str | None = None):
        """Auto-interp scores with their explanations (one row per latent, explainer, scorer)."""
        import pandas as pd

        sae_id = self._sae(sae)["sae_id"] if sae else None
        return pd.DataFrame(results.interp_scores(self.db, sae_id))

    def frontier(self, frontiers: Any = None):
        """The variant frontiers (FVU vs L0, CE loss score vs L0, dead vs width), plotly."""
        from evaluation.compare import FRONTIERS, comparison_rows, frontier_figure

        return frontier_figure(comparison_rows(self.db), frontiers or FRONTIERS)

    def feature(self, sae: str, feature: int) -> FeatureView:
        """One latent's dashboard (examples, histograms, logit effects, explanations)."""
        with results.connect(self.db, read_only=True) as con:
            row = results.find_sae(con, sae)
            dash = results.feature_dashboard(con, row["sae_id"], int(feature))
            ids = {t for e in dash["examples"] for t in e["tokens"]}
            ids |= {r["token_id"] for r in dash["logits"]}
            vocab = results.token_strings(con, row["model_sha256"], sorted(ids))
        scores = [
            s for s in results.interp_scores(self.db, row["sae_id"]) if s["feature"] == feature
        ]
        return FeatureView(row["name"], int(feature), dash, vocab, scores)

    def nearest(self, sae: str, feature: int, k: int = 5):
        """The k latents whose decoder directions are closest (cosine) to this one's."""
        import pandas as pd
        import torch

        from sae.checkpoint import load_sae

        row = self._sae(sae)
        w = load_sae(row["path"]).W_dec.detach()
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = w @ w[int(feature)]
        cos[int(feature)] = -float("inf")
        top = torch.topk(cos, min(k, w.shape[0] - 1))
        return pd.DataFrame(
            {"feature": top.indices.tolist(), "cosine": [round(v, 4) for v in top.values.tolist()]}
        )

    def _sae(self, sae: str) -> dict:
        with results.connect(self.db, read_only=True) as con:
            return results.find_sae(con, sae)


@dataclass
class FeatureView:
    """One latent's dashboard; displays itself in a notebook (`_repr_html_`)."""

    sae: str
    feature: int
    data: dict
    vocab: dict[int, str]
    scores: list[dict] = field(default_factory=list)

    @property
    def stats(self) -> dict:
        return self.data["stats"]

    def examples_html(self, kind: str = "top", n: int = 5) -> str:
        """Example windows with each token's background shaded by its activation (escaped)."""
        rows = [e for e in self.data["examples"] if e["kind"] == kind][:n]
        peak = max((max(e["acts"]) for e in rows if e["acts"]), default=0.0) or 1.0
        lines = []
        for e in rows:
            spans = []
            for tok, act in zip(e["tokens"], e["acts"], strict=True):
                text = html.escape(self.vocab.get(tok, f"<{tok}>")).replace("\n", "⏎")
                alpha = max(0.0, min(1.0, act / peak))
                title = f"{act:.3g}"
                spans.append(
                    f'<span title="{title}" style="background: rgba(255,140,0,{alpha:.2f})">'
                    f"{text}</span>"
                )
            lines.append(
                f'<div style="font-family: monospace; white-space: pre-wrap">'
                f"<b>{e['activation']:.3g}</b> {''.join(spans)}</div>"
            )
        return "\n".join(lines)

    def histogram(self):
        """Histogram of the latent's non-zero activations (log-spaced bins), plotly."""
        import plotly.graph_objects as go

        hist = next((h for h in self.data["histograms"] if h["kind"] == "activation"), None)
        fig = go.Figure()
        if hist is not None:
            edges = hist["bin_edges"]
            mids = [(a * b) ** 0.5 for a, b in zip(edges[:-1], edges[1:], strict=True)]
            fig.add_bar(x=mids, y=hist["counts"], name="activations")
            fig.update_xaxes(type="log", title_text="activation")
        fig.update_layout(
            title=f"{self.sae} latent {self.feature}: activations", height=320, width=520
        )
        return fig

    def logit_effects(self):
        """The tokens this latent's decoder direction promotes and suppresses, plotly."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for side, colour in (("top", "#2ca02c"), ("bottom", "#d62728")):
            rows = [r for r in self.data["logits"] if r["side"] == side]
            fig.add_bar(
                x=[r["value"] for r in rows],
                y=[repr(self.vocab.get(r["token_id"], str(r["token_id"]))) for r in rows],
                orientation="h",
                name=side,
                marker_color=colour,
            )
        fig.update_layout(
            title=f"{self.sae} latent {self.feature}: logit effects", height=420, width=520
        )
        return fig

    def explanations(self):
        """Explanations and scores (with their intervals) of this latent, pandas."""
        import pandas as pd

        cols = ["explainer", "explanation", "scorer", "value", "ci_low", "ci_high", "status"]
        frame = pd.DataFrame(self.scores)
        return frame[[c for c in cols if c in frame.columns]] if len(frame) else frame

    def _repr_html_(self) -> str:
        s = self.stats
        head = (
            f"<h4>{html.escape(self.sae)} latent {self.feature}</h4>"
            f"<p>density {s.get('density', 0):.3g}, max activation "
            f"{s.get('max_act') or 0:.3g}</p>"
        )
        return head + self.examples_html()
