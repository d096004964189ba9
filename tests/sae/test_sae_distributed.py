"""Data-parallel training: 2 gloo processes match 1 process on the same data."""

from __future__ import annotations

import _ddp_worker
import torch
import torch.multiprocessing as mp

from saelab.sae import load_sae
from saelab.sae.distributed import DistContext

# Per-rank gradients are summed in another order than the single-process batch sum; after
# 10 Adam steps the weights agree to float32 rounding, far below this tolerance.
ATOL = 1e-5


def test_two_gloo_processes_match_one(tmp_path):
    threads = torch.get_num_threads()
    try:
        single = _ddp_worker.train_states(DistContext())
    finally:
        torch.set_num_threads(threads)
    result = tmp_path / "ddp.pt"
    mp.spawn(
        _ddp_worker.worker,
        args=(2, str(tmp_path / "init"), str(result), str(tmp_path / "out")),
        nprocs=2,
        join=True,
    )
    ddp = torch.load(result)
    assert set(ddp) == set(single)
    for name in single:
        for key, value in single[name].items():
            diff = (ddp[name][key] - value).abs().max().item()
            assert diff <= ATOL, (name, key, diff)
    # Rank 0 wrote the checkpoints.
    assert load_sae(tmp_path / "out" / "topk-64-k4").architecture == "topk"
