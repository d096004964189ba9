"""The model's activations at one hook for a list of texts.

API (stable; the SCR, TPP and SHIFT evals build on it):

- `pooled_activations(model, texts, hook, *, max_length=128, batch_size=32) -> Tensor [N, d]`:
  per text, the mean of the hook's activation over its real tokens;
- `token_activations(model, texts, hook, *, max_length=128, batch_size=32) -> TokenActivations`:
  every real token's activation, flat `[T, d]`, with `offsets` (text i owns rows
  `offsets[i]:offsets[i+1]`); `.pooled()` gives the same means, `mean_pool(values, offsets)`
  pools any per-token values (e.g. SAE latents) the same way.

Each text is run as SAEBench runs it: BOS, then the text's tokens, truncated to `max_length`
tokens in all (SAEBench's context_length, 128). Real tokens are those that are not special
tokens (BOS, EOS, padding, as SAEBench's mask); the model still sees BOS. Texts are batched by
length (right-padded: with a causal model the padding cannot change a real token) and the model
stops after the hook's block. `model` is a `LoadedModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelab.base.errors import UserError


@dataclass
class TokenActivations:
    """The real tokens' activations of a list of texts, flat."""

    acts: Tensor
    """`[T, d]` float32, text after text, in the order of the texts given."""
    offsets: np.ndarray
    """`[N + 1]`: text i's tokens are rows `offsets[i]:offsets[i + 1]`."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pooled(self) -> Tensor:
        """`[N, d]`: each text's mean activation over its real tokens."""
        return mean_pool(self.acts, self.offsets)

    def select(self, idx: Sequence[int] | np.ndarray) -> TokenActivations:
        """The texts `idx` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        counts = np.diff(self.offsets)[idx]
        rows = np.concatenate(
            [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx] or [np.zeros(0, int)]
        )
        return TokenActivations(
            self.acts[torch.from_numpy(rows)], np.concatenate([[0], np.cumsum(counts)])
        )


def mean_pool(values: Tensor, offsets: np.ndarray) -> Tensor:
    """`[N, k]` means over each text's rows of per-token `values [T, k]`."""
    counts = torch.from_numpy(np.diff(offsets)).to(values.device)
    index = torch.repeat_interleave(torch.arange(len(counts), device=values.device), counts)
    sums = torch.zeros(len(counts), values.shape[1], dtype=values.dtype, device=values.device)
    sums.index_add_(0, index, values)
    return sums / counts[:, None].to(values.dtype)


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int = 128) -> list[list[int]]:
    """BOS then each text's tokens (no other special tokens added), at most `max_length`."""
    from saelab.activations.corpus import bos_token_id

    if max_length < 2:
        raise UserError(f"max_length must be at least 2 (BOS and one token), got {max_length}")
    bos = bos_token_id(tokenizer)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[bos, *row][:max_length] for row in ids]


@torch.no_grad()
def token_activations(
    model, texts: Sequence[str], hook: str, *, max_length: int = 128, batch_size: int = 32
) -> TokenActivations:
    """Every real token's activation at `hook` (see the module docstring)."""
    if isinstance(texts, str):
        raise UserError("give a list of texts, not one string")
    model.validate_hooks([hook])
    token_ids = tokenize_texts(model.tokenizer, texts, max_length)
    special = torch.tensor(sorted(int(i) for i in model.tokenizer.all_special_ids))
    real = [~torch.isin(torch.tensor(row), special) for row in token_ids]
    empty = [i for i, r in enumerate(real) if not r.any()]
    if empty:
        raise UserError(
            f"text {empty[0]} ({texts[empty[0]][:40]!r}) has no token but special ones; "
            "drop empty texts"
        )
    pad = model.tokenizer.pad_token_id
    pad = int(pad if pad is not None else token_ids[0][0])
    stop = model.stop_layer([hook])
    device = model.device
    per_text: list[Tensor | None] = [None] * len(token_ids)
    order = np.argsort([-len(r) for r in token_ids], kind="stable")
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = len(token_ids[batch[0]])
        toks = torch.full((len(batch), width), pad, dtype=torch.long)
        for row, i in enumerate(batch):
            toks[row, : len(token_ids[i])] = torch.tensor(token_ids[i])
        _, cache = model.bridge.run_with_cache(
            toks.to(device), names_filter=[hook], stop_at_layer=stop, return_cache_object=False
        )
        acts = cache[hook].float().cpu()
        for row, i in enumerate(batch):
            n = len(token_ids[i])
            per_text[i] = acts[row, :n][real[i]]
    counts = [len(a) for a in per_text]
    return TokenActivations(torch.cat(per_text), np.concatenate([[0], np.cumsum(counts)]))


def pooled_activations(
    model, texts: Sequence[str], hook: str, *, max_length: int = 128, batch_size: int = 32
) -> Tensor:
    """`[N, d]`: each text's mean activation at `hook` over its real tokens."""
    return token_activations(
        model, texts, hook, max_length=max_length, batch_size=batch_size
    ).pooled()
