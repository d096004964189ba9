"""Latent choice and the clamping intervention (SAEBench's `get_top_features` and
`anthropic_clamp_resid_SAE_features`), and the forward passes that run them.

At the SAE's hook, on every position the SAE reads (not BOS, padding or special tokens: SAEBench
zeroes the BOS latents, saelab's SAEs never saw special tokens), each picked latent that fires is
set to −multiplier and the SAE's error is kept: x' = x + decode(f') − decode(f). A position where
no picked latent fires is left exactly as it was, so a sequence on which none fires needs no new
forward pass (its clean answer stands); the clean pass records which latents fire anywhere on
each sequence (`measure._FireCounter`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def pick_latents(forget_freq: np.ndarray, retain_freq: np.ndarray, threshold: float) -> np.ndarray:
    """Latents below `threshold` retain firing frequency, by forget frequency (highest first),
    those that never fire on the forget corpus left out (SAEBench's `get_top_features`)."""
    score = np.where(retain_freq >= threshold, 0.0, forget_freq)
    order = np.argsort(-score, kind="stable")
    return order[: int(np.count_nonzero(score))]


@torch.no_grad()
def clamp(sae, x: Tensor, latents: Tensor, multiplier: float) -> Tensor:
    """`x` `[N, d_in]` with each of `latents` that fires clamped to −multiplier, error kept."""
    f = sae.encode(x.float())
    picked = f[:, latents]
    clamped = f.clone()
    clamped[:, latents] = torch.where(picked > 0, torch.full_like(picked, -multiplier), picked)
    return (x.float() + sae.decode(clamped) - sae.decode(f)).to(x.dtype)


def positions_mask(tokens: Tensor, lengths: Tensor, skip_ids: Tensor) -> Tensor:
    """Bool `[B, T]`: the positions an SAE reads (inside the sequence, not the first, not a
    special token)."""
    arange = torch.arange(tokens.shape[1], device=tokens.device)
    inside = arange[None, :] < lengths[:, None]
    return inside & (arange[None, :] > 0) & ~torch.isin(tokens, skip_ids)


def pad_batch(batch: list[tuple[int, ...]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Right-padded tokens `[B, T]` and lengths `[B]` (right padding leaves causal outputs at the
    real positions unchanged)."""
    lengths = torch.tensor([len(t) for t in batch], device=device)
    out = torch.full((len(batch), int(lengths.max())), pad_id, dtype=torch.long, device=device)
    for row, toks in enumerate(batch):
        out[row, : len(toks)] = torch.tensor(toks, device=device)
    return out, lengths


@torch.no_grad()
def run_batches(
    bridge,
    hook: str,
    sae,
    token_seqs: list[tuple[int, ...]],
    skip_ids: Tensor,
    pad_id: int,
    batch_size: int,
    read: Callable[[Tensor, slice], list] | None,
    edit: Callable[[Tensor], Tensor] | None = None,
    stop_at_layer: int | None = None,
    on_codes: Callable[[Tensor, Tensor, slice], None] | None = None,
) -> list:
    """Run `token_seqs` through the model in batches.

    `edit(x)` replaces the hook's activations at the SAE's positions; `on_codes(f, rows, s)`
    gets the SAE's codes there (`f` `[n, d_sae]`, the batch row of each, the batch's slice);
    `read(logits, s)` turns a batch's logits into its readouts (None: stop at `stop_at_layer`
    and return nothing)."""
    device = skip_ids.device
    out: list = []
    for start in range(0, len(token_seqs), batch_size):
        s = slice(start, start + batch_size)
        tokens, lengths = pad_batch(token_seqs[s], pad_id, device)
        mask = positions_mask(tokens, lengths, skip_ids)

        def at_hook(act: Tensor, hook=None, _mask=mask, _s=s) -> Tensor:
            if on_codes is not None:
                rows = torch.nonzero(_mask)[:, 0]
                on_codes(sae.encode(act[_mask].float()), rows, _s)
            if edit is None:
                return act
            act = act.clone()
            act[_mask] = edit(act[_mask])
            return act

        if read is None:
            bridge.run_with_hooks(tokens, fwd_hooks=[(hook, at_hook)], stop_at_layer=stop_at_layer)
            continue
        logits = bridge.run_with_hooks(tokens, fwd_hooks=[(hook, at_hook)], return_type="logits")
        out.extend(read(logits, s))
    return out
