"""The intervention and the binary mask over latents that SAEBench 0.6 learns for one attribute
(its `evals/ravel/mdbm.py`: an annealed sigmoid, not the cosine selection its README describes).

At the base prompt's entity position the hook's activation x_base is replaced by

    decode((1 − m)·encode(x_base) + m·encode(x_source))

with no error term added back (SAEBench's default: adding it "typically degrades performance"),
where x_source is the same hook's activation at the source prompt's entity position. Training uses
m = sigmoid(w / T) with T annealed log-linearly from 1 to 1e-4 over all steps, Adam on w (from 0),
and cross-entropy of the last position's logits against the target token; evaluation uses the
hard mask m = [w > 0].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Pair:
    """A base prompt, a source prompt, and what the intervened model should say."""

    base: int
    """Index of the base prompt."""
    source: int
    """Index of the source prompt."""
    cause: bool
    """A cause pair (the mask's attribute: the answer should switch to the source's value) or
    an isolation pair (another attribute: the answer should keep the base's value)."""
    target_token: int
    """First token of the expected answer (the training target)."""
    target_value: str
    """The expected value (the evaluation checks the generated text against it)."""


def intervention_hook(sae, mask: Tensor, source: Tensor, pos: Tensor):
    """A hook function that writes the masked mix of base and source latents, decoded without
    the error term, at `pos` (one position per row); `mask` `[d_sae]` holds m."""
    rows = torch.arange(len(pos), device=pos.device)

    def edit(act: Tensor, hook=None) -> Tensor:
        with torch.no_grad():
            f_base = sae.encode(act[rows, pos].float())
            f_source = sae.encode(source)
        mixed = (1 - mask) * f_base + mask * f_source
        out = act.clone()
        out[rows, pos] = sae.decode(mixed).to(act.dtype)
        return out

    return edit


def temperatures(n_steps: int) -> Tensor:
    """SAEBench's schedule: log-spaced from 1 down to 1e-4 over every training step."""
    return torch.logspace(0.0, -4.0, max(n_steps, 1), dtype=torch.float64)


def train_mask(
    bridge, hook: str, sae, batches: list, n_epochs: int, lr: float, device: str
) -> Tensor:
    """The learned mask logits w `[d_sae]`; `batches` are (tokens, attention, pos, source
    states, target tokens) tuples."""
    w = torch.zeros(sae.d_sae, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr)
    schedule = temperatures(n_epochs * len(batches))
    step = 0
    for _ in range(n_epochs):
        for tokens, attention, pos, source, target in batches:
            mask = torch.sigmoid(w / float(schedule[step]))
            edit = intervention_hook(sae, mask, source, pos)
            with torch.enable_grad():
                logits = bridge.run_with_hooks(
                    tokens, fwd_hooks=[(hook, edit)], return_type="logits", attention_mask=attention
                )[:, -1]
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
                (grad,) = torch.autograd.grad(loss, [w])
            optimizer.zero_grad()
            w.grad = grad
            optimizer.step()
            step += 1
    return w.detach()


def hard_mask(w: Tensor) -> Tensor:
    """The evaluation mask: latents whose logit ended above 0."""
    return (w > 0).float()
