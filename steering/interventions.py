"""Interventions on one hook of the model, as context managers that always remove their hooks.

An `Edit` maps the hook's activation `h [batch, pos, d]` at the chosen positions to a steered
one. The edits (REFERENCE §Steering):
- `Add`: h ← h + c · v (v a direction, e.g. a decoder row or a DiffMean vector).
- `Clamp`: set latents of an SAE to values and add the decoder change, keeping the SAE's error
  term: h ← h + Σ_j (value_j − f_j(h)) · W_dec[j] (the decoder is affine, so this is exactly
  h − x̂(f) + x̂(f')). Ablation is a clamp to 0 (zero) or to the latent's mean over all tokens.
- `Cap`: projection cap, v̂·h ≤ c: h ← h − max(0, v̂·h − c) · v̂.

`Steering` hooks a list of edits onto one hook point; it knows the absolute position of the
first position each forward sees (`at(start)`), so steering "generated" tokens works the same
with a KV cache (one new position per forward) and without (the whole sequence every time).
Position 0 (BOS, never seen by an SAE in training) is never edited.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

POSITIONS = ("prompt", "generated", "all")


class Edit:
    """One change of the activation; `apply` gets only the rows to steer, `[n, d]`."""

    def apply(self, h: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Add(Edit):
    vector: Tensor
    """`[d]`: what is added (direction times strength, in activation units)."""

    def apply(self, h: Tensor) -> Tensor:
        return h + self.vector.to(h.dtype)


@dataclass
class Clamp(Edit):
    sae: torch.nn.Module
    """The SAE whose latents are set (its `encode` gives dense latents, `W_dec [d_sae, d]`)."""
    features: list[int]
    values: Tensor
    """`[len(features)]`: the value each latent is set to."""

    def apply(self, h: Tensor) -> Tensor:
        idx = torch.as_tensor(self.features, device=h.device)
        f = self.sae.encode(h.float())[:, idx]
        delta = (self.values.to(f) - f) @ self.sae.W_dec[idx].float()
        return h + delta.to(h.dtype)


@dataclass
class Cap(Edit):
    direction: Tensor
    """`[d]`, unit norm."""
    cap: float
    """Largest allowed projection v̂·h."""

    def apply(self, h: Tensor) -> Tensor:
        v = self.direction.to(h.dtype)
        excess = (h @ v - self.cap).clamp_min(0)
        return h - excess[:, None] * v


@dataclass
class Steering:
    """Edits at one hook of a `TransformerBridge`, at the chosen positions."""

    bridge: torch.nn.Module
    hook: str
    edits: list[Edit]
    positions: str = "all"
    """prompt, generated or all."""
    prompt_len: int | None = None
    """Tokens of the prompt (BOS included); None: every position counts as prompt."""
    start: int = 0
    """Absolute position of the first position the next forward sees (see `at`)."""
    enabled: bool = True
    """Off: the hook passes activations through (one hooked model, clean and steered runs)."""

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, not {self.positions!r}")

    def at(self, start: int, prompt_len: int | None = None) -> Steering:
        """Set where the next forward starts (0 without a cache; the cache length with one)."""
        self.start = start
        if prompt_len is not None:
            self.prompt_len = prompt_len
        return self

    def mask(self, n_pos: int, device) -> Tensor:
        pos = torch.arange(self.start, self.start + n_pos, device=device)
        keep = pos > 0
        if self.positions != "all":
            boundary = self.prompt_len if self.prompt_len is not None else 1 << 62
            keep &= pos < boundary if self.positions == "prompt" else pos >= boundary
        return keep

    def __call__(self, h: Tensor, hook=None) -> Tensor | None:
        if not self.enabled or not self.edits:
            return None
        keep = self.mask(h.shape[1], h.device)
        if not bool(keep.any()):
            return None
        rows = h[:, keep]
        flat = rows.reshape(-1, rows.shape[-1])
        for edit in self.edits:
            flat = edit.apply(flat)
        out = h.clone()
        out[:, keep] = flat.reshape(rows.shape)
        return out


@contextlib.contextmanager
def hooked(steering: Steering) -> Iterator[Steering]:
    """Attach the steering hook; it comes off when the block ends, exception or not."""
    point = steering.bridge.hook_dict[steering.hook]
    handle = point.add_hook(steering)
    try:
        yield steering
    finally:
        handle.hook.remove()
        if handle in point.fwd_hooks:
            point.fwd_hooks.remove(handle)


def hook_count(bridge: torch.nn.Module) -> int:
    """Forward hooks on every hook point (a test that nothing was left behind)."""
    points = {id(p): p for p in bridge.hook_dict.values()}  # aliases name one point twice
    return sum(len(p._forward_hooks) for p in points.values())
