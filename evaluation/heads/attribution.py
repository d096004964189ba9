"""Head attribution of an attention SAE's latents (Kissane et al. 2024, "Interpreting Attention
Layer Outputs with Sparse Autoencoders").

The SAE reads `attn.hook_z`, the heads' outputs concatenated (`[n_heads · d_head]`, head h at
columns h·d_head … (h+1)·d_head). Two views of which heads a latent belongs to:

- **decoder-norm share**: ‖W_dec[f, slice_h]‖² / ‖W_dec[f]‖², how the latent's write is split
  over the heads (sums to 1 over heads);
- **direct feature attribution (DFA) share**: the encoder is linear before its activation, so a
  latent's pre-activation is b_enc[f] + Σ_h c_h with c_h = W_enc[slice_h, f] · x̃[slice_h] and
  x̃ the SAE's centred input (z − b_dec, or z for an SAE without the pre-bias). On each of the
  latent's top examples (the rows where it fires most) head h's share is |c_h| / Σ_h' |c_h'|,
  and the latent's DFA share is the mean over those examples. Absolute values make the shares
  of an example sum to 1 even where heads pull against each other.

Everything is read from the activation store: no model run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def norm_shares(W_dec: Tensor, n_heads: int) -> Tensor:
    """`[d_sae, n_heads]`: each head's share of each latent's squared decoder norm (float64)."""
    w = W_dec.detach().double().reshape(W_dec.shape[0], n_heads, -1)
    per_head = w.pow(2).sum(-1)
    return per_head / per_head.sum(-1, keepdim=True).clamp_min(1e-300)


def head_contributions(sae, x: Tensor, idx: Tensor, n_heads: int) -> Tensor:
    """Per row of `x [N, d_in]` and latent of `idx [N, k]`: each head's linear contribution to
    the latent's pre-activation, `[N, k, n_heads]` (float64)."""
    shift = sae.input_shift  # b_dec, or None for an SAE without the pre-bias
    centred = x.double() if shift is None else x.double() - shift.detach().double()
    centred = centred.reshape(x.shape[0], 1, n_heads, -1)
    rows = sae.encoder_weight.detach().double()[idx]  # [N, k, d_in]
    return (rows.reshape(*idx.shape, n_heads, -1) * centred).sum(-1)


@dataclass
class TopExamples:
    """Each latent's top examples so far: activations `[d_sae, n]` (−inf: empty slot) and the
    heads' contributions on them `[d_sae, n, n_heads]`."""

    acts: Tensor
    contrib: Tensor

    @classmethod
    def empty(cls, d_sae: int, n: int, n_heads: int) -> TopExamples:
        return cls(
            torch.full((d_sae, n), -torch.inf, dtype=torch.float64),
            torch.zeros(d_sae, n, n_heads, dtype=torch.float64),
        )

    def add(self, idx: Tensor, vals: Tensor, contrib: Tensor) -> None:
        """Merge the active (row, latent) pairs of a batch: `idx`, `vals [N, k]`,
        `contrib [N, k, n_heads]`; pairs with value <= 0 are not firings."""
        on = vals > 0
        lat, val, con = idx[on], vals[on].double(), contrib[on]
        if lat.numel() == 0:
            return
        d_sae, n = self.acts.shape
        # a per-latent top-n over (old slots + new pairs): sort the new pairs by latent, rank them
        # within their latent, keep the best n of each, then merge with the old slots
        order = torch.argsort(val, descending=True, stable=True)
        order = order[torch.argsort(lat[order], stable=True)]
        lat, val, con = lat[order], val[order], con[order]
        counts = torch.bincount(lat, minlength=d_sae)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(lat.numel()) - starts[lat]
        keep = rank < n
        new_acts = torch.full((d_sae, n), -torch.inf, dtype=torch.float64)
        new_con = torch.zeros(d_sae, n, self.contrib.shape[-1], dtype=torch.float64)
        new_acts[lat[keep], rank[keep]] = val[keep]
        new_con[lat[keep], rank[keep]] = con[keep]
        acts = torch.cat([self.acts, new_acts], 1)
        both = torch.cat([self.contrib, new_con], 1)
        top = acts.topk(n, dim=1)
        self.acts = top.values
        self.contrib = both.gather(1, top.indices[..., None].expand(-1, -1, both.shape[-1]))

    def dfa_shares(self) -> tuple[Tensor, Tensor]:
        """(`[d_sae, n_heads]` mean |c_h| share over each latent's examples (NaN without any),
        `[d_sae]` examples per latent)."""
        filled = torch.isfinite(self.acts)
        mag = self.contrib.abs()
        share = mag / mag.sum(-1, keepdim=True).clamp_min(1e-300)
        count = filled.sum(1)
        total = (share * filled[..., None]).sum(1)
        mean = total / count.clamp_min(1)[:, None]
        mean[count == 0] = torch.nan
        return mean, count


def top_examples(
    sae, batches, n_heads: int, n_examples: int, rows_per_batch: int = 1024
) -> tuple[TopExamples, int]:
    """Stream `[N, d_in]` float32 row batches through the SAE; returns each latent's top
    examples (by activation) with the heads' contributions, and the rows read."""
    top = TopExamples.empty(sae.d_sae, n_examples, n_heads)
    n_rows = 0
    with torch.no_grad():
        for x in batches:
            for start in range(0, x.shape[0], rows_per_batch):
                part = x[start : start + rows_per_batch]
                code = sae.encode_sparse(part)
                contrib = head_contributions(sae, part, code.idx, n_heads)
                top.add(code.idx.cpu(), code.vals.cpu(), contrib.cpu())
            n_rows += x.shape[0]
    return top, n_rows


def store_rows(store, hook: str, chunks: list[int], max_rows: int, device: str):
    """The masked rows (no BOS, special tokens or invalid sequences) of `chunks`, chunk by
    chunk as float32 `[N, d]`, up to `max_rows`."""
    left = max_rows
    for chunk in chunks:
        if left <= 0:
            return
        mask = np.asarray(store.token_mask(chunk)).reshape(-1)
        x = store.read_acts(hook, chunk).float().reshape(mask.shape[0], -1)
        x = x[torch.from_numpy(mask)][:left]
        left -= x.shape[0]
        yield x.to(device)
