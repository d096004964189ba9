"""The circuit as a self-contained HTML graph (plotly, its JavaScript inlined).

Columns are the spliced hooks in computation order (per-position nodes spread across their
column by position); nodes are sized by |effect| and coloured by its sign; edges are coloured
by sign with width by |effect|. Hover text shows the node, its effect and activation, and the
latent's top logit tokens and explanation when the results store has them. Every string that
came from a store or a tokenizer is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from pathlib import Path

from saelab.base.errors import UserError
from saelab.circuits.nodes import SUMMED
from saelab.circuits.splice import hook_label
from saelab.resultstore import ResultsStore

POS, NEG = "#2166ac", "#b2182b"


def _notes(records: dict, store: ResultsStore | None, kept) -> dict:
    """Top logit tokens and explanations of the kept latents, where the results store has them."""
    if store is None:
        return {}
    from saelab import resultstore as results

    out = {}
    try:
        with store.session():
            for hook, rec in records.items():
                feats = sorted({n.key.feature for n in kept if n.key.hook == hook} - {-1})
                notes = results.feature_notes(store, rec.sae_id, feats, rec.model_sha256)
                for f, note in notes.items():
                    out[(hook, f)] = note
    except UserError:  # a busy or unreadable file: the graph is drawn without notes
        return {}
    return out


def figure(
    result, spliced, records: dict | None = None, store: ResultsStore | None = None, tokenizer=None
):
    """The graph as a plotly figure; hover notes come from the `ResultsStore` `store`, if any."""
    import plotly.graph_objects as go

    kept = result.kept
    hooks = spliced.hooks
    col = {h: i for i, h in enumerate(hooks)}
    T = max((n.key.pos for n in kept), default=0) + 1
    notes = _notes(records or {}, store, kept)
    tokens = None
    if tokenizer is not None and result.config is not None:
        tokens = _first_prompt_tokens(result, tokenizer)
    place: dict = {}
    rank: dict = {}
    for n in kept:
        slot = (n.key.hook, n.key.pos)
        rank[slot] = rank.get(slot, 0) + 1
        x = col[n.key.hook] + (0 if n.key.pos == SUMMED else 0.8 * n.key.pos / max(T, 1))
        place[n.key] = (x, -rank[slot])
    biggest = max((abs(n.effect) for n in kept), default=1.0) or 1.0
    fig = go.Figure()
    strongest = max((abs(e.effect) for e in result.edges), default=1.0) or 1.0
    for sign, colour in ((1, POS), (-1, NEG)):
        for lo, hi, width in ((0.0, 0.2, 0.6), (0.2, 0.6, 1.5), (0.6, 1.01, 3.0)):
            xs, ys = [], []
            for e in result.edges:
                r = abs(e.effect) / strongest
                if (
                    (e.effect > 0) == (sign > 0)
                    and lo <= r < hi
                    and e.up in place
                    and e.down in place
                ):
                    (x0, y0), (x1, y1) = place[e.up], place[e.down]
                    xs += [x0, x1, None]
                    ys += [y0, y1, None]
            if xs:
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        hoverinfo="skip",
                        showlegend=False,
                        line={"color": colour, "width": width},
                        opacity=0.5,
                    )
                )
    xs, ys, sizes, colours, texts = [], [], [], [], []
    for n in kept:
        x, y = place[n.key]
        xs.append(x)
        ys.append(y)
        sizes.append(8 + 30 * math.sqrt(abs(n.effect) / biggest))
        colours.append(POS if n.effect > 0 else NEG)
        texts.append(_hover(n, notes.get((n.key.hook, n.key.feature), {}), tokens))
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            showlegend=False,
            hovertext=texts,
            hoverinfo="text",
            marker={"size": sizes, "color": colours, "line": {"width": 1, "color": "#333"}},
        )
    )
    title = (
        f"{html.escape(result.task)}: {len(kept)} nodes, {len(result.edges)} edges, "
        f"faithfulness {result.faithfulness:.2f}, completeness {result.completeness:.2f} "
        f"({html.escape(result.curves.ablation)} ablation, errors {result.curves.error_policy})"
    )
    fig.update_layout(
        title=title,
        xaxis={
            "tickvals": list(range(len(hooks))),
            "ticktext": [hook_label(h) for h in hooks],
            "title": "submodule (columns; per-position nodes spread by position)",
        },
        yaxis={"visible": False},
        plot_bgcolor="white",
        height=700,
    )
    return fig


def _first_prompt_tokens(result, tokenizer) -> list[str] | None:
    try:
        from saelab.activations.corpus import bos_token_id
        from saelab.circuits.tasks import load_task

        cfg = result.config
        task = load_task(cfg.task, tokenizer, bos_token_id(tokenizer), 1, cfg.seed)
        return [tokenizer.decode([int(t)]) for t in task.clean[0]]
    except Exception:
        return None


def _hover(node, note: dict, tokens) -> str:
    k = node.key
    lines = [html.escape(k.label())]
    if k.pos != SUMMED and tokens and k.pos < len(tokens):
        lines.append(f"position {k.pos}: {html.escape(repr(tokens[k.pos]))}")
    lines.append(f"effect {node.effect:+.4f}, activation {node.activation:.3g}")
    if note.get("top_tokens"):
        lines.append("top tokens: " + html.escape(", ".join(repr(t) for t in note["top_tokens"])))
    if note.get("explanation"):
        lines.append("explanation: " + html.escape(note["explanation"][:200]))
    return "<br>".join(lines)


def write_html(
    result, spliced, path: str, records=None, store: ResultsStore | None = None, tokenizer=None
) -> None:
    """Write the graph as one self-contained HTML file (atomically)."""
    fig = figure(result, spliced, records, store, tokenizer)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
