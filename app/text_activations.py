"""One latent's activation on every token of a text the user types (the Feature page's "test
your own text" box): the SAE's model run up to the SAE's hook, the hook's activations encoded
by the SAE, the latent's column read out.

The text is tokenised as the features eval saw its corpus: BOS first, then the text's tokens
without special tokens. BOS is run (the model needs it) but not returned: the eval masks it, so
its activation has no example to compare with.

No Streamlit here: the page caches `load_probe` with `st.cache_resource`; tests call these
functions directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.activations.models import model_lock

MAX_TEXT_TOKENS = 256
"""Longest text the box runs (tokens after BOS): the page waits for the forward pass."""


@dataclass
class Probe:
    """What a text is run through: the loaded model, the SAE and the hook it reads."""

    model: object
    """`saelab.activations.models.LoadedModel`."""
    sae: object
    """The loaded SAE module."""
    hook: str


@dataclass
class TextActivations:
    token_ids: list[int]
    """The text's tokens (BOS left out)."""
    acts: list[float]
    """The latent's activation at each of those tokens."""


def load_probe(sae_row, model=None) -> Probe:
    """The SAE of a `saes` row (its weights checked against the registered ones) and its
    model; one-line errors for a moved checkpoint or a model that does not match."""
    from saelab.activations.models import load_model
    from saelab.resultstore import verified_folder
    from saelab.sae.checkpoint import WEIGHTS_FILE, load_sae
    from saelab.steering.target import check_compatible

    sae = load_sae(verified_folder(sae_row, WEIGHTS_FILE))
    if model is None:
        model = load_model(sae_row.model or "smollm2-135m")
    check_compatible(sae_row, sae, model)
    return Probe(model, sae.eval(), sae_row.hook)


def tokenize(tokenizer, text: str) -> list[int]:
    """BOS, then the text's tokens (at most `MAX_TEXT_TOKENS`)."""
    from saelab.activations.corpus import bos_token_id

    ids = tokenizer.encode(text, add_special_tokens=False)[:MAX_TEXT_TOKENS]
    return [bos_token_id(tokenizer), *ids]


def latent_activations(probe: Probe, text: str, feature: int) -> TextActivations:
    """The latent's activation on each token of `text`."""
    ids = tokenize(probe.model.tokenizer, text)
    acts = activations_on_tokens(probe, ids, feature)
    return TextActivations(ids[1:], acts[1:])


@torch.no_grad()
def activations_on_tokens(probe: Probe, token_ids: list[int], feature: int) -> list[float]:
    """The latent's activation at each of these tokens, run as one sequence (BOS included
    where the caller puts it)."""
    model = probe.model
    device = next(model.bridge.parameters()).device
    tokens = torch.tensor([list(token_ids)], dtype=torch.long, device=device)
    with model_lock(model.bridge):  # app sessions share the model; caching adds hooks
        _, cache = model.bridge.run_with_cache(
            tokens,
            names_filter=[probe.hook],
            stop_at_layer=model.stop_layer([probe.hook]),
            return_cache_object=False,
        )
    x = cache[probe.hook][0].reshape(len(token_ids), -1).float().cpu()
    return [float(v) for v in probe.sae.encode(x)[:, int(feature)]]
