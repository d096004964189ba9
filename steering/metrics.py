"""What every steering run reports (REFERENCE §Steering), each a small function with a test.

- `kl_per_token`: KL(P_clean ‖ P_steered) of the next-token distributions, per position, in nats
  (float64). On neutral text the run reports its mean over every position but BOS (which is never
  steered), with the edits at every position.
- `generated_text_stats`: one unsteered forward over prompt + generation gives the perplexity of
  the generated tokens (exp of their mean negative log-likelihood under the clean model) and the
  target latents' activation on them: the hook's activation re-encoded with the SAE, the mean
  over generated tokens (up to the first end-of-text token, as the texts are cut) and target
  latents. Read by the unsteered model, it says whether the text itself carries the feature: the
  unsteered run's value is the clean text's, to compare with (a TopK latent is often 0 on
  clean text, and on text steered too hard to mean anything).
- `logit_lift`: mean over positions and the latents' top logit tokens of
  log P_steered(token) − log P_clean(token): the concept strength when there is no explanation.
- `embedding_similarity`: mean cosine between each generated text and the explanation under the
  offline MiniLM embedder (the embedding scorer's model): the concept strength with one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def kl_per_token(clean_logits: Tensor, steered_logits: Tensor) -> Tensor:
    """KL(softmax(clean) ‖ softmax(steered)) over the last axis, in float64 nats."""
    p = torch.log_softmax(clean_logits.double(), -1)
    q = torch.log_softmax(steered_logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def logit_lift(clean_logits: Tensor, steered_logits: Tensor, token_ids: list[int]) -> float:
    """Mean log-prob gain of `token_ids` over every position (float64)."""
    idx = torch.as_tensor(token_ids, dtype=torch.long)
    p = torch.log_softmax(clean_logits.double(), -1)[..., idx]
    q = torch.log_softmax(steered_logits.double(), -1)[..., idx]
    return float((q - p).mean())


@dataclass
class TextStats:
    perplexity: np.ndarray
    """Per sample: exp(mean NLL of its generated tokens) under the clean model."""
    feature_act: np.ndarray
    """Per sample: mean activation of the target latents over its generated tokens."""


@contextlib.contextmanager
def _capture(bridge, hook: str, store: dict):
    point = bridge.hook_dict[hook]

    def grab(h, hook=None):
        store["h"] = h.detach()

    handle = point.add_hook(grab)
    try:
        yield
    finally:
        handle.hook.remove()
        if handle in point.fwd_hooks:
            point.fwd_hooks.remove(handle)


@torch.no_grad()
def generated_text_stats(
    bridge,
    sae,
    hook: str,
    tokens: Tensor,
    prompt_len: int,
    features: list[int],
    eos: int | None = None,
) -> TextStats:
    """`tokens [n, prompt_len + new]`: clean-model perplexity and latent activation of the new
    part, over the generated tokens before the first `eos` (at least the first one)."""
    got: dict = {}
    with _capture(bridge, hook, got):
        logits = bridge(tokens, return_type="logits")
    logp = torch.log_softmax(logits[:, prompt_len - 1 : -1].double(), -1)
    target = tokens[:, prompt_len:]
    keep = torch.ones_like(target, dtype=torch.double)
    if eos is not None:
        keep = (torch.cumsum((target == eos).long(), 1) == 0).double()
        keep[:, 0] = 1.0
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    h = got["h"][:, prompt_len:]
    acts = sae.encode(h.reshape(-1, h.shape[-1]).float())[:, list(features)]
    acts = acts.reshape(h.shape[0], h.shape[1], -1).double().mean(2)
    count = keep.sum(1)
    return TextStats(
        ((nll * keep).sum(1) / count).exp().numpy(), ((acts * keep).sum(1) / count).numpy()
    )


def embedding_similarity(texts: list[str], explanation: str) -> np.ndarray:
    """Cosine between each text and the explanation (unit-norm MiniLM embeddings)."""
    from saelab.activations.text_embedding import embed

    vectors = embed([explanation] + list(texts))
    return vectors[1:] @ vectors[0]
