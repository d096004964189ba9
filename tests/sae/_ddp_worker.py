"""Worker of the 2-process data-parallel test (imported by torch.multiprocessing.spawn)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from saelab.sae import TrainConfig, Trainer, make_config
from saelab.sae.distributed import DistContext
from saelab.sae.synthetic import SyntheticActivations

STEPS = 10


def configs():
    return [
        make_config("topk", d_sae=64, k=4),
        make_config("relu", d_sae=64),
        make_config("jumprelu", d_sae=64),
        make_config("gated", d_sae=64),
    ]


def train_states(ctx: DistContext, out=None) -> dict:
    torch.set_num_threads(1)
    data = SyntheticActivations(d_in=16, n_features=48, batch_size=128, seed=0)
    cfg = TrainConfig(tokens=128 * STEPS, progress=False, init_tokens=256, dead_window_tokens=256)
    trainer = Trainer(configs(), data, cfg, out=out, dist=ctx)
    trainer.run()
    return {m.name: {k: v.clone() for k, v in m.sae.state_dict().items()} for m in trainer.members}


def worker(rank: int, world: int, init_file: str, result_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        states = train_states(DistContext(rank, world), out=out)
        if rank == 0:
            torch.save(states, result_file)
    finally:
        dist.destroy_process_group()
