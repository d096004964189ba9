"""Feature: one latent's dashboard (examples with the activation on hover, a "test your own
text" box, histograms, logit effects, explanations with their scores, nearest features by
decoder cosine), with previous/next/random navigation and one click to steer with it."""

from __future__ import annotations

import html
import math
import random
import re

import streamlit as st

from saelab.app import common, decoder, text_activations
from saelab.app.tokens import (
    TokenBytes,
    highlight_html,
    markdown_literal,
    merge_pieces,
    short_text,
    visible,
)

TITLE = "Feature"
ICON = ":material/bubble_chart:"

SCORE_COLUMNS = [
    "scorer", "status", "value", "ci_low", "ci_high", "n_windows", "n_valid", "n_failures",
    "n_positive", "n_negative",
]  # fmt: skip
KIND_TITLES = {"top": "Top activations", "random": "Random activating examples"}


@st.cache_resource(show_spinner=False)
def token_bytes(model: str | None) -> TokenBytes | None:
    """The model's byte table (tokenizer file only; no model weights), None when unavailable."""
    if not model:
        return None
    try:
        from saelab.activations.models import resolve_model_folder

        folder, _ = resolve_model_folder(model)
        return TokenBytes(folder / "tokenizer.json")
    except Exception:  # any failure: fall back to the stored per-id strings
        return None


@st.cache_resource(show_spinner=False, max_entries=8)
def _unit_decoder(weights: str, mtime_ns: int):
    return decoder.unit_decoder(weights)


@st.cache_resource(show_spinner="Loading the model and the SAE (once per app process)…",
                   max_entries=4)  # fmt: skip
def _probe(sae_id: str, path: str, mtime_ns: int):
    """The SAE and its model for the "test your own text" box (keyed by the weights' file)."""
    sae = next(s for s in common.q("list_saes") if s.sae_id == sae_id)
    return text_activations.load_probe(sae, model=_model(sae.model or "smollm2-135m"))


@st.cache_resource(show_spinner=False)
def _model(spec: str):
    from saelab.activations.models import load_model

    return load_model(spec)


def vocab_moments(edges: list[float], counts: list[int]) -> tuple[float, float] | None:
    """Mean and standard deviation of a latent's logit effects over the whole vocabulary,
    from their stored histogram (bin centres); None without one."""
    total = sum(counts)
    if total == 0 or len(edges) != len(counts) + 1:
        return None
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    mean = sum(c * n for c, n in zip(centres, counts)) / total
    var = sum(n * (c - mean) ** 2 for c, n in zip(centres, counts)) / total
    return mean, math.sqrt(var)


def render() -> None:
    sae = common.pick_sae(common.q("list_saes"), key="feature")
    if sae is None:
        return
    d_sae = sae.d_sae
    current = common.feature_param(sae)  # a bad link shows a notice and the default latent
    st.title(f"Feature {current}")
    st.caption(f"SAE {sae.name} · {sae.architecture} · {d_sae} latents · {sae.hook}")
    feature = _navigation(sae.sae_id, d_sae, current)
    if not common.q("feature_stats_exist", sae.sae_id):
        st.info("No feature statistics for this SAE yet: run `saelab eval --evals features` on it.")
        return
    dash = common.q("feature_dashboard", sae.sae_id, feature)
    stats = dash.stats
    _stats(stats)
    if stats.dead:
        st.warning(
            f"Dead latent: it never fired on the {stats.n_tokens:,} tokens the features eval "
            "read, so there are no examples, histograms or explanations to show."
        )
        _by_head(sae, feature)
        _neighbours(sae, feature)
        return
    if stats.too_few_examples:
        st.info(
            f"Rare latent: it fired on only {stats.n_active} tokens, fewer than the eval's "
            "minimum, so its examples and any explanation rest on little evidence."
        )
    left, right = st.columns([3, 2])
    with left:
        _test_text(dash)
        _examples(dash)
    with right:
        _explanations(dash)
        _latent_metrics(dash)
        _by_head(sae, feature)
        _histograms(dash)
        _logits(dash)
        _neighbours(sae, feature)


def _navigation(sae_id: str, d_sae: int, current: int) -> int:
    cols = st.columns([2, 1, 1, 1, 2, 2])
    chosen = cols[0].number_input(
        "Feature", min_value=0, max_value=d_sae - 1, value=current, step=1, key=f"num_{current}"
    )
    target = int(chosen)
    if cols[1].button("◀ Previous", disabled=current == 0, key="prev"):
        target = current - 1
    if cols[2].button("Next ▶", disabled=current >= d_sae - 1, key="next"):
        target = current + 1
    if cols[3].button("Random", key="random"):
        picked = common.q("random_feature", sae_id, random.randrange(1 << 30))
        target = picked if picked is not None else random.randrange(d_sae)
    if cols[4].button("Steer with this feature", key="steer", icon=":material/tune:"):
        page = "playground" if "playground" in common.PAGES else "steering"
        common.goto(page, sae=sae_id, feature=current)
    if target != current or st.query_params.get("feature") != str(current):
        st.query_params["feature"] = str(target)
        if target != current:
            st.rerun()
    return current


def _stats(stats) -> None:
    cols = st.columns(5)
    cols[0].metric("Density", f"{stats.density:.3g}")
    ld = stats.log10_density
    cols[1].metric("log10 density", "–" if ld is None or math.isinf(ld) else f"{ld:.2f}")
    cols[2].metric("Max activation", f"{stats.max_act:.3g}")
    cols[3].metric("Mean activation", f"{stats.mean_act:.3g}")
    cols[4].metric("Active tokens", f"{stats.n_active:,}")


def _examples(dash) -> None:
    if not dash.examples:
        st.info("No example windows stored for this latent.")
        return
    table = token_bytes(dash.sae.model)
    scale = float(dash.stats.max_act or 0)

    def show(rows: list) -> None:
        blocks = []
        for e in rows:
            pieces = merge_pieces(e.tokens, table, dash.tokens)
            label = html.escape(f"{e.activation:.3g}")
            blocks.append(
                f'<div style="display:flex;gap:8px"><div style="min-width:3.5em;color:#888;'
                f'font-family:monospace">{label}</div>'
                f"{highlight_html(pieces, e.acts, scale, e.tokens)}</div>"
            )
        st.html("".join(blocks))

    by_kind: dict[str, list] = {}
    for e in dash.examples:
        by_kind.setdefault(e.kind, []).append(e)
    if "top" in by_kind:
        st.subheader(KIND_TITLES["top"])
        show(by_kind["top"])
    bands = sorted({e.band for e in by_kind.get("quantile", [])}, reverse=True)
    if bands:
        st.subheader("Quantile bands")
        for band in bands:
            rows = [e for e in by_kind["quantile"] if e.band == band]
            lo, hi = min(r.activation for r in rows), max(r.activation for r in rows)
            with st.expander(
                f"Band {band + 1} of {len(bands)}: {lo:.3g} … {hi:.3g}", expanded=band == bands[0]
            ):
                show(rows)
    for kind in sorted(set(by_kind) - {"top", "quantile"}):
        with st.expander(KIND_TITLES.get(kind, f"{kind.capitalize()} examples")):
            show(by_kind[kind])


def _test_text(dash) -> None:
    """The latent's activation on each token of a text the user types."""
    st.subheader("Test your own text")
    with st.form("test_text", border=False):
        text = st.text_area(
            "Text",
            key="test_text_input",
            height=80,
            placeholder="Type text to see this latent's activation on each of its tokens",
            label_visibility="collapsed",
        )
        run = st.form_submit_button("Run on this text", key="test_text_run")
    if not run:
        return
    if not text.strip():
        st.info("Type some text first.")
        return
    try:
        weights = decoder.weights_file(dash.sae)
        probe = _probe(dash.sae.sae_id, str(weights), weights.stat().st_mtime_ns)
    except common.db.UserError as err:
        st.error(f"Cannot run the SAE: {err}")
        return
    result = text_activations.latent_activations(probe, text, dash.stats.feature)
    pieces = merge_pieces(result.token_ids, token_bytes(dash.sae.model), dash.tokens)
    peak = max(result.acts, default=0.0)
    scale = float(dash.stats.max_act or 0)
    st.html(
        '<div class="saelab-test-text">'
        + highlight_html(pieces, result.acts, scale, result.token_ids)
        + "</div>"
    )
    n_tokens = len(result.token_ids)
    cut = " (cut to the first tokens)" if n_tokens >= text_activations.MAX_TEXT_TOKENS else ""
    st.caption(
        f"{n_tokens} tokens{cut}; largest activation {peak:.3g} "
        f"({peak / scale:.0%} of the max over the eval's corpus, {scale:.3g}); "
        "hover a token for its value."
        if scale > 0
        else f"{n_tokens} tokens{cut}; largest activation {peak:.3g}."
    )


def _histograms(dash) -> None:
    import plotly.graph_objects as go

    hists = {h.kind: h for h in dash.histograms}
    act = hists.get("activation")
    if act and sum(act.counts):
        edges, counts = act.bin_edges, act.counts
        centres = [
            math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2 for a, b in zip(edges, edges[1:])
        ]
        fig = go.Figure(
            go.Bar(x=centres, y=counts, width=[b - a for a, b in zip(edges, edges[1:])])
        )
        fig.update_layout(
            title="Activation histogram (active tokens)",
            height=260,
            xaxis_type="log",
            margin={"t": 40, "b": 20},
        )
        st.plotly_chart(fig, key="hist_act")
    density = common.q("density_histogram", dash.sae.sae_id)
    ld = dash.stats.log10_density
    if density and ld is not None and not math.isinf(ld):
        fig = go.Figure(
            go.Bar(x=[d["lo"] for d in density], y=[d["n"] for d in density], marker_color="#bbb")
        )
        fig.add_vline(x=ld, line_color="#d62728", annotation_text="this latent")
        fig.update_layout(
            title="log10 density among the SAE's live latents",
            height=220,
            margin={"t": 40, "b": 20},
        )
        st.plotly_chart(fig, key="hist_density")


def _logits(dash) -> None:
    import pandas as pd

    if not dash.logits:
        return
    st.subheader("Logit effects")
    hist = next((h for h in dash.histograms if h.kind == "logit"), None)
    moments = vocab_moments(hist.bin_edges, hist.counts) if hist else None
    frame, unit = logit_table(dash.logits, dash.tokens, moments)
    top = max((r.value for r in dash.logits if r.side == "top"), default=0.0)
    raw = (
        f"the raw direct effect per unit of activation (largest here {top:.3g}) is taken "
        "before the final norm divides by the residual stream's size, so only its ranking "
        "means something"
    )
    st.caption(
        "Tokens whose logit this latent's decoder direction raises (▲ promoted) or lowers "
        "(▼ suppressed) directly, through the unembedding. "
        + (
            "**z**: the effect in standard deviations of this latent's effects over the whole "
            f"vocabulary (most tokens sit near 0); {raw}."
            if unit == "z"
            else f"**raw**: {raw}."
        )
    )
    st.dataframe(pd.DataFrame(frame), hide_index=True, key="logits")


def logit_table(logits: list, tokens: dict[int, str], moments: tuple[float, float] | None):
    """Promoted and suppressed tokens side by side (`▲ token`, `▲ <unit>`, `▼ token`,
    `▼ <unit>`), and the unit: "z" over the vocabulary where its moments are known, else
    "raw"."""
    unit = "z" if moments and moments[1] > 0 else "raw"

    def value(v: float) -> float:
        return round((v - moments[0]) / moments[1], 1) if unit == "z" else round(v, 1)

    def name(token_id: int) -> str:
        return repr(tokens[token_id]) if token_id in tokens else f"<{token_id}>"

    sides = {side: [r for r in logits if r.side == side] for side in ("top", "bottom")}
    n = max(len(v) for v in sides.values())
    columns: dict[str, list] = {}
    for side, mark in (("top", "▲"), ("bottom", "▼")):
        part = sides[side] + [None] * (n - len(sides[side]))
        columns[f"{mark} token"] = [name(r.token_id) if r else None for r in part]
        columns[f"{mark} {unit}"] = [value(r.value) if r else None for r in part]
    return columns, unit


def _explanations(dash) -> None:
    import pandas as pd

    st.subheader("Explanations")
    if not dash.explanations:
        st.caption("No explanation yet: run `saelab explain` on this SAE.")
        return
    for item in dash.explanations:
        e = item.explanation
        text = e.explanation if e.explanation else f"({e.status})"
        st.html(
            f'<div class="saelab-explanation" style="font-size:1.05em;padding:6px 10px;'
            f'border-left:3px solid #ff7800;white-space:pre-wrap">{visible(text)}</div>'
            f'<div style="color:#888;font-size:0.85em">explainer {html.escape(e.explainer)}'
            f" · status {html.escape(e.status)} · {e.n_examples or 0} examples</div>"
        )
        if item.scores:
            frame = pd.DataFrame([s.as_dict() for s in item.scores])
            frame["interval"] = [
                f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "–"
                for lo, hi in zip(frame["ci_low"], frame["ci_high"])
            ]
            st.dataframe(
                frame[[*SCORE_COLUMNS, "interval"]], hide_index=True, key=f"scores_{e.explainer}"
            )
        else:
            st.caption("Not scored.")


def _latent_metrics(dash) -> None:
    """Per-latent values of the evals that declare them, with each metric's definition."""
    if not dash.latent_metrics:
        return
    from saelab.evaluation.registry import describe

    st.subheader("Per-latent metrics")
    st.dataframe(
        [
            {
                "eval": r.eval,
                "metric": r.metric,
                "value": common.fmt(r.value),
                "definition": describe(r.eval, r.metric, per_latent=True) or "",
            }
            for r in dash.latent_metrics
        ],
        hide_index=True,
        key="latent_metrics",
    )


def head_shares_figure(rows: list, layer: int | None = None):
    """Grouped bars per head of one attention-SAE latent: its share of the decoder norm and of
    the direct feature attribution on its top examples (`FeatureHeadRow`s in head order)."""
    import plotly.graph_objects as go

    prefix = "" if layer is None else f"L{layer}."
    heads = [f"{prefix}H{r.head}" for r in rows]
    fig = go.Figure()
    fig.add_bar(name="decoder norm", x=heads, y=[r.norm_share for r in rows])
    if any(r.dfa_share is not None for r in rows):
        fig.add_bar(
            name=f"DFA, top {rows[0].n_examples} examples",
            x=heads,
            y=[r.dfa_share if r.dfa_share is not None else 0.0 for r in rows],
        )
    fig.update_layout(
        title="Share per head",
        barmode="group",
        height=260,
        yaxis={"range": [0, 1], "title": "share"},
        legend={"orientation": "h", "y": -0.25},
        margin={"t": 40, "b": 20},
    )
    return fig


def _by_head(sae, feature: int) -> None:
    """An attention SAE's latent by head (the heads eval's rows; nothing for other SAEs)."""
    rows = common.q("feature_heads", sae.sae_id, feature)
    if not rows:
        return
    st.subheader("By head")
    match = re.match(r"^blocks\.(\d+)\.", sae.hook or "")
    st.plotly_chart(head_shares_figure(rows, int(match.group(1)) if match else None), key="heads")
    top = max(rows, key=lambda r: r.norm_share)
    st.caption(
        f"Head {top.head} holds {top.norm_share:.0%} of the decoder norm. Decoder norm: "
        "‖W_dec[f, head]‖² / ‖W_dec[f]‖²; DFA: each head's mean share of |W_enc[head, f] · "
        "z[head]| on the latent's top examples (`saelab eval --evals heads`)."
    )


def _neighbours(sae, feature: int) -> None:
    st.subheader("Nearest features (decoder cosine)")
    try:
        weights = decoder.weights_file(sae)
    except common.db.UserError as err:
        st.caption(f"Decoder directions cannot be compared: {err}")
        return
    unit = _unit_decoder(str(weights), weights.stat().st_mtime_ns)
    near = decoder.nearest(unit, feature, k=8)
    texts = common.q("explanation_texts", sae.sae_id, [f for f, _ in near])
    for f, cos in near:
        common.feature_button(
            sae.sae_id, f, label=neighbour_label(f, cos, texts.get(f)), key="near"
        )


def neighbour_label(feature: int, cosine: float, explanation: str | None) -> str:
    """A nearest-feature button's label: number, cosine and the explanation shortened, shown
    literally (a label reads Markdown)."""
    text = f"#{feature} · cos {cosine:.2f}"
    if explanation:
        text += f" · {short_text(explanation, 40)}"
    return markdown_literal(text)
