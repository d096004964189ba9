"""Data-parallel training over torch.distributed (gloo on CPU, NCCL on CUDA).

Every rank reads the same batch stream and trains on its slice of each batch; gradients
are averaged weighted by slice size, so each step equals the single-process step on the
whole batch up to float summation order. Per-rank selections (BatchTopK's batch-wide top
k·N) are taken over the rank's slice; running estimates (its threshold) are averaged across
ranks after each step so every rank holds the same model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class DistContext:
    """This process's place in the data-parallel group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's contiguous slice of a batch (sizes differ by at most one row)."""
        if not self.enabled:
            return batch
        return batch.tensor_split(self.world_size)[self.rank]

    def all_reduce_grads(self, module: nn.Module, local_rows: int, global_rows: int) -> None:
        """Replace each gradient by the row-weighted mean over ranks (one flat all-reduce)."""
        if not self.enabled:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]) * (local_rows / global_rows)
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def average_buffers(self, module: nn.Module) -> None:
        if not self.enabled:
            return
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf /= self.world_size

    def sum(self, t: Tensor) -> Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_environment(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def current() -> DistContext:
    """The context of an already-initialised process group (or single process)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())
    return DistContext()
