"""SHIFT's model side: texts in, mean-pooled activations at the probe's hook out, with or
without ablations upstream, and the attribution of a probe's logit to SAE latents or neurons.

Texts are tokenised as BOS + text (SAEBench's context length, 128 tokens in all), right-padded;
the pool is the mean over the text's real tokens (not BOS, which the SAEs never trained on, nor
padding, which a causal model never lets touch earlier positions), exactly as the SCR/TPP
evals' `pooled_activations` pools. Ablations leave position 0 alone for
the same reason. Everything runs only up to the probe's block (`stop_at_layer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.base.errors import UserError
from saelab.circuits.splice import HookEdit, SplicedModel, SpliceState, hook_order
from saelab.sae.base import Code


@dataclass
class Batch:
    """Tokenised texts: `tokens` `[B, T]` (BOS first, right-padded) and `mask` `[B, T]`, True
    at the text's own tokens (BOS and padding False)."""

    tokens: Tensor
    mask: Tensor


def tokenize(tokenizer, texts: list[str], max_length: int = 128) -> Batch:
    """BOS + each text's tokens, `max_length` in all, right-padded; the mask holds the real
    tokens (not special ones), as `saelab.evaluation.datasets.text_acts` (the SCR/TPP evals'
    pooling) does."""
    from saelab.evaluation.datasets.text_acts import tokenize_texts

    ids = tokenize_texts(tokenizer, texts, max_length)
    special = torch.tensor(sorted(int(i) for i in tokenizer.all_special_ids))
    T = max(len(i) for i in ids)
    tokens = torch.full((len(ids), T), ids[0][0], dtype=torch.long)
    mask = torch.zeros(len(ids), T, dtype=torch.bool)
    for row, toks in enumerate(ids):
        t = torch.tensor(toks, dtype=torch.long)
        tokens[row, : len(toks)] = t
        mask[row, : len(toks)] = ~torch.isin(t, special)
    if not mask.any(1).all():
        empty = int((~mask.any(1)).nonzero()[0])
        raise UserError(f"text {texts[empty][:40]!r} has no token but special ones; drop it")
    return Batch(tokens, mask)


def batches(tokenizer, texts: list[str], size: int, max_length: int = 128) -> Iterator[Batch]:
    for start in range(0, len(texts), size):
        yield tokenize(tokenizer, texts[start : start + size], max_length)


def mean_pool(acts: Tensor, mask: Tensor) -> Tensor:
    """Mean over each row's masked positions: `[B, T, d]` → `[B, d]`."""
    m = mask.to(acts.dtype).unsqueeze(-1)
    return (acts * m).sum(1) / m.sum(1).clamp_min(1.0)


def stop_layer(hooks: list[str]) -> int:
    """The `stop_at_layer` that still computes every hook in `hooks`."""
    return max(hook_order(h)[0] for h in hooks) + 1


def _forward(spliced: SplicedModel, tokens: Tensor, edits: dict, capture: str):
    stop = stop_layer([capture, *edits])
    full = stop >= spliced.model.n_layers
    return spliced.forward(tokens, edits, capture=[capture], stop_at_layer=None if full else stop)


# -- ablations -------------------------------------------------------------------------------


def zero_latents(sae, latents: Tensor) -> HookEdit:
    """x → decode(f with `latents` set to 0) + ε, ε = x − x̂ kept (the SFC paper's SHIFT
    ablation). The SAE encodes the activation it receives, so an ablation upstream reaches its
    selection, as in the paper's forward with every dictionary in place. BOS is left alone."""
    ablated = latents.to(torch.long)

    def edit(x: Tensor) -> Tensor:
        rows = x.reshape(-1, sae.d_in)
        code = sae.encode_sparse(rows)
        x_hat = sae.decode_sparse(code)
        vals = code.vals * ~torch.isin(code.idx, ablated)
        out = sae.decode_sparse(Code(code.idx, vals, sae.d_sae)) + (rows - x_hat)
        out = out.reshape(x.shape).clone()
        out[:, 0] = x[:, 0]
        return out

    return edit


def set_neurons(dims: Tensor, values: Tensor) -> HookEdit:
    """Coordinates `dims` of the activation set to `values` (their means: the paper's neuron
    ablation; zeroing a residual coordinate would move it far off its usual range). BOS kept."""

    def edit(x: Tensor) -> Tensor:
        out = x.clone()
        out[:, 1:, dims] = values.to(x.dtype)
        return out

    return edit


def pooled(
    spliced: SplicedModel,
    batch_iter,
    probe_hook: str,
    edits: dict[str, HookEdit] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Mean-pooled activations at `probe_hook` `[N, d]`, with `edits` (ablations) upstream."""
    out = []
    with torch.no_grad():
        for batch in batch_iter:
            _, captured = _forward(spliced, batch.tokens, edits or {}, probe_hook)
            out.append(mean_pool(captured[probe_hook].float(), batch.mask))
            if progress is not None:
                progress(len(batch.tokens))
    return torch.cat(out)


def neuron_means(spliced: SplicedModel, batch_iter, hooks: list[str]) -> dict[str, Tensor]:
    """Each hook's mean activation over the texts' own tokens `[d]` (the neuron ablation's
    values)."""
    sums = {h: torch.zeros(spliced.model.d_model, dtype=torch.float64) for h in hooks}
    n = 0
    with torch.no_grad():
        for batch in batch_iter:
            captured = {}
            edits = {h: _capture(captured, h) for h in hooks}
            _forward(spliced, batch.tokens, edits, hooks[-1])
            for h in hooks:
                sums[h] += captured[h][batch.mask].double().sum(0)
            n += int(batch.mask.sum())
    return {h: (s / max(n, 1)).float() for h, s in sums.items()}


def _capture(store: dict, name: str) -> HookEdit:
    def edit(x: Tensor) -> None:
        store[name] = x.detach()

    return edit


# -- attribution -----------------------------------------------------------------------------


@dataclass
class LinearProbe:
    """A binary probe in the raw activation space: logit = pooled · w + b."""

    w: Tensor
    b: float

    def logits(self, pooled_acts: Tensor) -> Tensor:
        return pooled_acts.to(self.w.dtype) @ self.w + self.b


def probe_metric(probe: LinearProbe, acts: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """The SFC paper's SHIFT metric per text: the probe's logit towards the wrong class (logit
    for label 0, −logit for label 1). A node whose removal raises it supports the prediction."""
    logit = probe.logits(mean_pool(acts, mask))
    return torch.where(labels == 0, logit, -logit)


def attribute_latents(
    spliced: SplicedModel, batch: Batch, labels: Tensor, probe: LinearProbe, probe_hook: str
) -> dict[str, Tensor]:
    """AtP with zero ablation of every latent of every spliced hook, summed over positions and
    summed over the batch's texts: hook → `[d_sae]` (divide by the number of texts for the mean).

    Î(f_i) = (0 − f_i) · ∂m/∂f_i with ∂m/∂f_i = g · W_dec[i] (circuits/attribution.py)."""
    from saelab.circuits.attribution import PatchSide, hook_effects

    states: dict[str, SpliceState] = {}
    edits = {h: spliced.splice_edit(h, states, grads=True) for h in spliced.hooks}
    with torch.enable_grad():
        _, captured = _forward(spliced, batch.tokens, edits, probe_hook)
        m = probe_metric(probe, captured[probe_hook], batch.mask, labels)
        outs = [states[h].out for h in spliced.hooks]
        grads = torch.autograd.grad(m.sum(), outs, allow_unused=True)
    totals = {}
    for hook, g in zip(spliced.hooks, grads):
        g = torch.zeros_like(outs[0]) if g is None else g
        eff = hook_effects(spliced, hook, states[hook], PatchSide("zero"), g)
        totals[hook] = eff.feature.to_dense().sum((0, 1))
    return totals


def attribute_neurons(
    spliced: SplicedModel,
    batch: Batch,
    labels: Tensor,
    probe: LinearProbe,
    probe_hook: str,
    hooks: list[str],
    means: dict[str, Tensor],
) -> dict[str, Tensor]:
    """AtP of every coordinate of each hook, moved to its mean (the neuron ablation), summed
    over positions (BOS excluded) and texts: hook → `[d]`."""
    leaves: dict[str, Tensor] = {}

    def leaf(name: str) -> HookEdit:
        def edit(x: Tensor) -> Tensor:
            x = x.detach().requires_grad_(True) if not x.requires_grad else x * 1.0
            x.retain_grad()
            leaves[name] = x
            return x

        return edit

    with torch.enable_grad():
        captured: dict[str, Tensor] = {}
        edits = {h: leaf(h) for h in hooks}
        if probe_hook not in edits:
            edits[probe_hook] = lambda x: None
        _, captured = _forward(spliced, batch.tokens, edits, probe_hook)
        m = probe_metric(probe, captured[probe_hook], batch.mask, labels)
        grads = torch.autograd.grad(m.sum(), [leaves[h] for h in hooks])
    out = {}
    for hook, g in zip(hooks, grads):
        x = leaves[hook].detach()
        delta = means[hook].view(1, 1, -1) - x
        delta[:, 0] = 0
        out[hook] = (delta * g).sum((0, 1))
    return out


def pooled_latents(
    spliced: SplicedModel, batch: Batch, wanted: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """For each hook's `wanted` latents: their mean-pooled activation per text `[B, n]`, and
    their largest single activations with the token each fired on (`[B*T, n]` values and token
    ids, BOS and padding at −inf) for the judge's descriptions."""
    states: dict[str, SpliceState] = {}
    edits = {h: spliced.splice_edit(h, states, grads=False) for h in spliced.hooks}
    last = spliced.hooks[-1]
    with torch.no_grad():
        _forward(spliced, batch.tokens, edits, last)
    B, T = batch.tokens.shape
    out, peaks = {}, {}
    for hook, latents in wanted.items():
        s = states[hook]
        dense = ((s.idx.unsqueeze(-1) == latents.view(1, 1, -1)) * s.vals.unsqueeze(-1)).sum(1)
        dense = dense.view(B, T, -1).float()
        out[hook] = mean_pool(dense, batch.mask)
        flat = dense.masked_fill(~batch.mask.unsqueeze(-1), float("-inf")).view(B * T, -1)
        peaks[hook] = (flat, batch.tokens.reshape(-1))
    return out, peaks
