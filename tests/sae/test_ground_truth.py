"""Ground truth: the synthetic dictionary is not an SAE's starting point, and an SAE learns it.

Until the synthetic directions got a seed of their own, `SyntheticActivations(seed=s)` drew
them with `torch.randn` from `manual_seed(s)`, exactly as an SAE of seed s draws its decoder:
an SAE trained on data of its own seed started with the true dictionary in its first rows,
and every recovery test passed before the first step.
"""

from __future__ import annotations

import torch

from saelab.sae import TrainConfig, build_sae, make_config, train
from saelab.sae.synthetic import SyntheticActivations, recovery_fraction


def test_an_untrained_sae_recovers_nothing_of_the_synthetic_dictionary():
    for seed in range(3):
        data = SyntheticActivations(d_in=16, n_features=32, active=3, seed=seed)
        for sae_seed in range(3):
            sae = build_sae(make_config("topk", d_sae=64, k=3, d_in=16, seed=sae_seed))
            assert recovery_fraction(data.directions, sae.W_dec.detach()) == 0.0


def test_topk_learns_the_dictionary_from_a_random_start():
    """2x spare latents, k the true mean number of active features: the decoder finds at
    least 85% of the true directions (cosine > 0.9); the start finds none."""
    data = SyntheticActivations(d_in=32, n_features=64, batch_size=512, active=4, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = make_config("topk", d_sae=128, k=4)
        (sae,) = train([cfg], data, TrainConfig(tokens=512 * 150, progress=False)).values()
    finally:
        torch.set_num_threads(threads)
    assert recovery_fraction(data.directions, sae.W_dec.detach()) >= 0.85
