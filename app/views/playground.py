"""The steering playground: prompt, SAE, latents, mode and strength -> clean and steered text side
by side with the run's metrics, through `saelab.steering.run.steer`.

The model is loaded once per process (`st.cache_resource`), and only when Generate is pressed.
The run is stored through the steering API's own writer: the app's only write to the results
file, made only on the user's request, after the session's read-only connection is closed
(DuckDB refuses a writable and a read-only connection to one file in one process).
"""

from __future__ import annotations

import streamlit as st

from saelab.app import common
from saelab.app.tokens import visible

MAX_NEW_TOKENS = 16
"""Default tokens generated per prompt (small: the page waits for them)."""
_LAST = "_saelab_playground_last"
_METRICS = ("kl", "feature_act", "concept", "concept_kind", "perplexity", "strength", "unit")


@st.cache_resource(show_spinner="Loading the model (once per app process)…")
def _model(spec: str):
    from saelab.activations.models import load_model

    return load_model(spec)


def parse_features(text: str) -> list[int]:
    """'3, 7 12' -> [3, 7, 12]; a one-line UserError for anything else."""
    parts = text.replace(",", " ").split()
    try:
        out = [int(p) for p in parts]
    except ValueError:
        raise common.db.UserError(
            f"latents must be whole numbers separated by commas, got {text!r}"
        ) from None
    if not out:
        raise common.db.UserError("name at least one latent to steer")
    return out


def render() -> None:
    from saelab.steering.harness import MODES

    st.subheader("Playground")
    saes = common.q("list_saes")
    if not saes:
        st.caption("No SAE in this file to steer with.")
        return
    labels = {s.sae_id: f"{s.name} · {s.architecture} · {s.d_sae}" for s in saes}
    ids = list(labels)
    wanted = st.query_params.get("sae")
    first = wanted if wanted in ids else ids[0]
    # a live latent of the first SAE by default: a dead one has nothing to steer with
    live = common.q("random_feature", first, 0)
    default = st.query_params.get("feature", str(live if live is not None else 0))
    with st.form("playground"):
        prompt = st.text_area("Prompt", "The city of", key="pg_prompt")
        sae_id = st.selectbox(
            "SAE",
            ids,
            index=ids.index(first),
            format_func=labels.get,
            key="pg_sae",
        )
        features = st.text_input("Latent(s)", default, key="pg_feat")
        mode = st.selectbox("Mode", list(MODES), key="pg_mode")
        strength = st.number_input("Strength (× the latent's max activation)", value=4.0,
                                   key="pg_strength")  # fmt: skip
        tokens = st.number_input("New tokens", 1, 128, MAX_NEW_TOKENS, key="pg_tokens")
        go = st.form_submit_button("Generate", key="pg_go")
    if go:
        sae = next(s for s in saes if s.sae_id == sae_id)
        try:
            st.session_state[_LAST] = _run(sae, prompt, features, mode, strength, int(tokens))
        except common.db.UserError as err:
            st.error(str(err))
            return
    last = st.session_state.get(_LAST)
    if last:
        _show(last)


def _run(sae, prompt: str, features: str, mode: str, strength: float, tokens: int) -> dict:
    from saelab.steering.generate import Sampling
    from saelab.steering.run import SteerConfig, steer

    if not prompt.strip():
        raise common.db.UserError("write a prompt to steer")
    cfg = SteerConfig(
        db=common.db_path(), sae=sae.sae_id, features=parse_features(features), mode=mode,
        strength=None if mode == "ablate" else float(strength), prompts=[prompt],
        sampling=Sampling(max_new_tokens=tokens, temperature=0.0), n_samples=1, baseline=False,
    )  # fmt: skip
    cfg.validate()  # before the model loads
    model = _model(sae.model or "smollm2-135m")
    common.close_reader()  # the write needs the file to itself within this process
    with st.spinner("Generating…"):
        report = steer(cfg, model=model)
    st.cache_data.clear()  # past runs: read afresh
    run = next(r for r in report.runs if r.method == "sae")
    sample = report.samples[run.run_id][0]
    return {"run": run, "sample": sample}


def _show(last: dict) -> None:
    run, sample = last["run"], last["sample"]
    st.caption(f"stored as run {run.run_id} (sweep {run.sweep_id})")
    st.html(f"<b>prompt</b> <span style='white-space:pre-wrap'>{visible(sample.prompt)}</span>")
    left, right = st.columns(2)
    left.html(
        "<div style='white-space:pre-wrap' class='pg-clean'><b>clean</b><br>"
        f"{visible(sample.clean_text)}</div>"
    )
    right.html(
        "<div style='white-space:pre-wrap' class='pg-steered'><b>steered</b><br>"
        f"{visible(sample.steered_text)}</div>"
    )
    st.dataframe(
        [{"metric": k, "value": common.fmt(getattr(run, k))} for k in _METRICS],
        hide_index=True,
        key="pg_metrics",
    )
