"""Sampling from the model, with or without a KV cache, under an optional `Steering`.

The steering hook is told the absolute position of each forward's first token: 0 when the whole
sequence is re-run (no cache), the cache length when only the new token is run. So a steering
restricted to generated positions edits exactly the same positions either way (the SAELens
tutorial's hook, which looks at the sequence length of each forward, misses them with a cache).

The cache is handed to the bridge twice: as `past_key_values` (transformers keeps it and moves
the positions on) and as `layer_past`. transformers 5 passes the cache to attention under the
name `cache`, while transformer-lens 4.3's attention bridge reads only `past_key_values` or
`layer_past`; without the second name every cached step attends to itself alone (the bridge's
own `generate` repeats one token). A test compares cached with uncached generation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.config import check_fields
from saelab.base.errors import UserError
from saelab.steering.interventions import Steering


@dataclass
class Sampling:
    """How tokens are drawn."""

    max_new_tokens: int = 24
    """Tokens generated after the prompt."""
    temperature: float = 1.0
    """0: greedy; otherwise softmax(logits / temperature)."""
    top_k: int = 0
    """Keep only the k most likely tokens before sampling (0: all)."""
    seed: int = 0
    """Seed of the sampler (one torch.Generator per call)."""
    use_cache: bool = True
    """Reuse keys and values of earlier positions (one position per forward after the prompt)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"`max_new_tokens` must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise UserError(
                f"`temperature` must be 0 (greedy) or a positive number, got {self.temperature}"
            )
        if self.top_k < 0:
            raise UserError(f"`top_k` must be 0 (all tokens) or more, got {self.top_k}")


def _pick(logits: Tensor, cfg: Sampling, gen: torch.Generator) -> Tensor:
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(logits.device)


def new_cache(bridge: torch.nn.Module):
    """An empty Hugging Face KV cache for the bridge's model."""
    from transformers import DynamicCache

    return DynamicCache(config=bridge.original_model.config)


@torch.no_grad()
def generate(
    bridge: torch.nn.Module,
    prompt: Tensor,
    cfg: Sampling,
    steering: Steering | None = None,
    n: int = 1,
) -> Tensor:
    """`n` continuations of one prompt (token ids with BOS, `[p]`): new tokens `[n, max_new]`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(bridge.parameters()).device
    ids = prompt.to(device).reshape(1, -1).repeat(n, 1)
    p = ids.shape[1]
    if steering is not None:
        steering.at(0, prompt_len=p)
    out = []
    cache = new_cache(bridge) if cfg.use_cache else None
    step_input = ids
    for t in range(cfg.max_new_tokens):
        if cfg.use_cache:
            if steering is not None:
                steering.at(0 if t == 0 else p + t - 1)
            with warnings.catch_warnings():  # the name transformer-lens still needs (above)
                warnings.filterwarnings("ignore", "`past_key_values` is deprecated", FutureWarning)
                logits = bridge(
                    step_input, return_type="logits", past_key_values=cache, layer_past=cache
                )
        else:
            if steering is not None:
                steering.at(0)
            logits = bridge(ids, return_type="logits")
        token = _pick(logits[:, -1], cfg, gen)
        out.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        step_input = token[:, None]
    return torch.stack(out, 1).cpu()
