"""The live loader: batches of a hook's activations together with the gradient of the LM loss
there, computed while training by running the model on the store's token sequences.

Gradient-informed SAEs (g-SAE) choose their latents with ∂(LM loss)/∂x at the hook, which a
harvested store does not hold. `LiveGradientLoader` is an `ActivationLoader` whose chunk rows
come from the model instead of the store's activation arrays: for each chunk of token
sequences it runs the model with the hook's output replaced by a detached leaf, takes the
next-token cross-entropy summed over the sequence's positions, and differentiates it with
respect to that leaf alone (`autograd.grad`: the backward runs only through the layers after
the hook and computes no weight gradients). A row is `[x, ∂L/∂x]` side by side, so the loader's windows, shuffling,
masks and exact-resume position apply unchanged (a resume recomputes the rows carried into its
window); iteration yields `(x, grad)` pairs.

Summing, not averaging, the cross-entropy over positions keeps each token's gradient
independent of how many sequences share a forward pass. The last position of a sequence
predicts nothing, so its gradient is zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from saelab.activations.loader import ActivationLoader
from saelab.activations.models import model_lock
from saelab.activations.store import ActivationStore
from saelab.base.errors import UserError


def hook_gradients(bridge, hook: str, tokens: Tensor, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """The hook's activations and ∂(Σ next-token CE of the sequence)/∂(activation), both
    float32 `[S, T, d]` on the CPU, for token sequences `[S, T]`."""
    device = next(bridge.parameters()).device
    acts, grads = [], []
    for start in range(0, len(tokens), batch_size):
        toks = tokens[start : start + batch_size].to(device)
        leaf: dict[str, Tensor] = {}

        def capture(act: Tensor, hook=None, _leaf=leaf) -> Tensor:
            _leaf["x"] = act.detach().float().requires_grad_(True)
            return _leaf["x"].to(act.dtype)

        with model_lock(bridge), torch.enable_grad():  # hooks live on the shared model
            logits = bridge.run_with_hooks(toks, fwd_hooks=[(hook, capture)], return_type="logits")
            logp = logits.float().log_softmax(-1)[:, :-1]
            loss = -logp.gather(-1, toks[:, 1:].unsqueeze(-1)).sum()
            (grad,) = torch.autograd.grad(loss, leaf["x"])
        x = leaf["x"].detach()
        acts.append(x.reshape(*x.shape[:2], -1).cpu())
        grads.append(grad.reshape(*grad.shape[:2], -1).cpu())
    return torch.cat(acts), torch.cat(grads)


class LiveGradientLoader(ActivationLoader):
    """An `ActivationLoader` over the store's token sequences that yields `(x, grad)` pairs
    `[batch, d]`: the hook's activation from a live forward pass and ∂(LM loss)/∂x there."""

    gives_grad = True
    """Batches carry the LM loss gradient at the hook (the trainer passes it as `ctx.grad`)."""

    def __init__(
        self,
        store: str | ActivationStore,
        hook: str,
        batch_size: int = 4096,
        *,
        model=None,
        forward_batch: int = 8,
        **kwargs,
    ) -> None:
        super().__init__(store, hook, batch_size, **kwargs)
        if self.cfg.outlier_factor is not None:
            raise UserError(
                "the live loader keeps every row; drop outlier_factor (it reads the stored "
                "activations)"
            )
        if forward_batch < 1:
            raise UserError(f"forward_batch must be at least 1, got {forward_batch}")
        self.forward_batch = forward_batch
        self.model = model if model is not None else store_model(self.store)

    def _chunk_rows(self, chunk: int) -> Tensor:
        tokens = torch.from_numpy(self.store.read_tokens(chunk)).long()
        acts, grads = hook_gradients(self.model.bridge, self.hook, tokens, self.forward_batch)
        if acts.shape[-1] != self.d_in:
            raise UserError(
                f"the model gives {self.hook} width {acts.shape[-1]} but the store says "
                f"{self.d_in}; the store was harvested from another model"
            )
        keep = torch.from_numpy(self._token_mask(chunk))  # flat [chunk_seqs * seq_len]
        rows = torch.cat([acts, grads], dim=-1).reshape(-1, 2 * self.d_in)
        return rows[keep]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:  # type: ignore[override]
        d = self.d_in
        for rows in super().__iter__():
            yield rows[:, :d].contiguous(), rows[:, d:].contiguous()


def store_model(store: ActivationStore, device: str = "cpu"):
    """The model a store was harvested from, checked against the weights hash it recorded."""
    from saelab.activations.models import load_model

    model = load_model(store.attrs["model"], device=device)
    recorded = store.attrs.get("model_sha256")
    if recorded and recorded != model.weights_sha256:
        raise UserError(
            f"store {store.url!r} was harvested from other weights of {store.attrs['model']!r} "
            "(its SHA-256 differs); load the same model files or harvest again"
        )
    return model
