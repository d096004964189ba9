"""Active subspace initialisation (sae/subspace_init.py): decoder rows start inside the top
principal subspace of the first sample (checked against the known basis of low-rank data, not
against the SVD the code uses), the encoder is their transpose, and with the option off the
start is today's seeded random one."""

from __future__ import annotations

import pytest
import torch

from saelab.base.errors import UserError
from saelab.sae import TrainConfig, Trainer, build_sae, make_config
from saelab.sae.subspace_init import variance_rank

D_IN, RANK, D_SAE = 48, 12, 192


class LowRank:
    """Float32 `[256, D_IN]` batches: a mean plus Gaussian coefficients on RANK orthonormal
    directions with decreasing scales (12, 11, ..., 1), so the top-m principal subspace of the
    data is the span of the first m directions."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D_IN, RANK, generator=g, dtype=torch.float64))
        self.basis = q.T  # [RANK, D_IN], orthonormal rows
        self.scales = torch.arange(RANK, 0, -1, dtype=torch.float64)
        self.mean = torch.randn(D_IN, generator=g, dtype=torch.float64)
        self.g = g

    def __iter__(self):
        while True:
            coef = torch.randn(256, RANK, generator=self.g, dtype=torch.float64) * self.scales
            yield (coef @ self.basis + self.mean).float()


def started(dim: int | None):
    """A TopK SAE after the trainer's data-dependent start."""
    cfg = make_config("topk", d_sae=D_SAE, k=4, seed=3, active_subspace_dim=dim)
    trainer = Trainer(cfg, LowRank(), TrainConfig(tokens=256, progress=False))
    trainer.setup()
    return trainer.members[0].sae, trainer


def outside(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Per row, the norm of its part outside span(basis rows)."""
    r = rows.double()
    return (r - (r @ basis.T) @ basis).norm(dim=1) / r.norm(dim=1)


@pytest.mark.parametrize("dim", [RANK, 5])
def test_decoder_rows_start_in_the_top_principal_subspace(dim):
    sae, _ = started(dim)
    top = LowRank().basis[:dim]
    # all 12 directions: exact; the top 5 of 12: as close as a 16384-row sample estimates them
    assert outside(sae.W_dec.detach(), top).max() < (1e-4 if dim == RANK else 0.05)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)
    # the encoder starts as the decoder's transpose (times the encoder-scale factor)
    enc = sae.encoder_weight.detach()
    cos = torch.nn.functional.cosine_similarity(enc, sae.W_dec.detach(), dim=1)
    assert cos.min() > 1 - 1e-5
    # the directions are spread over the subspace, not collapsed on a few
    coords = sae.W_dec.detach().double() @ top.T
    assert torch.linalg.matrix_rank(coords) == dim


def test_off_is_todays_random_start():
    sae, _ = started(None)
    fresh = build_sae(make_config("topk", d_sae=D_SAE, k=4, seed=3), D_IN)
    assert torch.equal(sae.W_dec.detach(), fresh.W_dec.detach())  # bit for bit
    assert outside(sae.W_dec.detach(), LowRank().basis).min() > 0.5  # random: mostly outside


def test_variance_rank_and_bad_settings():
    rows = torch.cat([b for _, b in zip(range(8), iter(LowRank()), strict=False)])
    assert variance_rank(rows, 0.999999) == RANK
    # 90% of the variance of scales 12..1 (squared 144..1, total 650)
    share = torch.arange(RANK, 0, -1).double().pow(2).cumsum(0) / 650
    assert variance_rank(rows, 0.9) == int((share < 0.9).sum()) + 1
    with pytest.raises(UserError, match="active_subspace_dim"):
        build_sae(make_config("topk", d_sae=8, k=2, active_subspace_dim=D_IN + 1), D_IN)
