"""The architecture registry is open: an SAE defined here, outside saelab, trains with
`saelab train` and round-trips its checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from saelab import cli
from saelab.base.errors import UserError
from saelab.sae import ops
from saelab.sae.architectures.topk import TopKConfig, TopKSAE
from saelab.sae.checkpoint import load_sae
from saelab.sae.registry import REGISTRY, get_architecture, register_architecture

HOOK = "blocks.2.hook_resid_post"


@dataclass
class FractionTopKConfig(TopKConfig):
    """TopK whose k is a fraction of the dictionary (a field no built-in SAE has)."""

    architecture = "test-fraction-topk"

    k_fraction: float = 0.25
    """Share of the latents kept per token."""

    def validate(self) -> None:
        self.k = max(1, round(self.k_fraction * self.d_sae))
        super().validate()


class FractionTopKSAE(TopKSAE):
    architecture = "test-fraction-topk"
    config_class = FractionTopKConfig

    def select(self, pre):
        return ops.topk(pre, max(1, round(self.cfg.k_fraction * self.d_sae)))[1], None


@pytest.fixture
def registered():
    register_architecture(FractionTopKSAE)
    yield FractionTopKSAE
    REGISTRY.pop(FractionTopKSAE.architecture, None)


def test_registered_architecture_trains_from_the_command_line(registered, small_store, tmp_path):
    out = tmp_path / "custom"
    argv = ["train", "--acts", small_store, "--hook", HOOK, "--batch-size", "128"]
    argv += ["--arch", registered.architecture, "--d-sae", "64", "--set", "k_fraction=0.0625"]
    argv += ["--tokens", "768", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0

    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["saelab"]["architecture"] == registered.architecture
    assert cfg["saelab"]["config"]["k_fraction"] == 0.0625

    sae = load_sae(out)
    assert type(sae) is FractionTopKSAE and sae.d_sae == 64
    x = torch.randn(32, sae.d_in, generator=torch.Generator().manual_seed(11))
    code = sae.encode_sparse(x)
    assert int((code.vals > 0).sum(-1).max()) <= 4  # 0.0625 * 64

    again = load_sae(out)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_register_refuses_a_taken_name_and_an_incomplete_class():
    class Clash(TopKSAE):
        architecture = "topk"

    with pytest.raises(ValueError, match="already registered"):
        register_architecture(Clash)

    class Nameless(TopKSAE):
        architecture = ""

    with pytest.raises(ValueError, match="architecture"):
        register_architecture(Nameless)
    with pytest.raises(UserError, match="known: .*topk"):
        get_architecture("no-such-sae")
