"""The neuron baseline: the model's own basis at a hook as a dictionary (the SFC paper's
comparison). Every coordinate of the activation is a node, the reconstruction is exact and the
error node is always 0, so a circuit over neurons is found and evaluated by the same code as
one over SAE features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saelab.sae.base import Code


class NeuronBasis(nn.Module):
    """Identity "SAE" of width d: latent i is coordinate i (negative values included)."""

    architecture = "neurons"

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d_in = self.d_sae = d
        self.W_dec = nn.Parameter(torch.eye(d), requires_grad=False)
        self.b_dec = nn.Parameter(torch.zeros(d), requires_grad=False)

    def _all(self, x: Tensor) -> Tensor:
        return torch.arange(self.d_sae, device=x.device).expand(x.shape[0], -1)

    def encode_sparse(self, x: Tensor) -> Code:
        return Code(self._all(x), x, self.d_sae)

    def encode_at(self, x: Tensor, idx: Tensor) -> Tensor:
        return x.gather(1, idx)

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode_sparse(self, code: Code) -> Tensor:
        return code.to_dense()

    def decode(self, f: Tensor) -> Tensor:
        return f


def neuron_spliced(model, hooks: list[str], selection: str = "frozen"):
    """A SplicedModel with the neuron basis at each hook."""
    from saelab.circuits.splice import SplicedModel, hook_width

    bases = {h: NeuronBasis(hook_width(model, h)) for h in hooks}
    return SplicedModel(model, bases, selection=selection)
