"""Sharding under torchrun: every rank runs its share of the samples, rank 0 merges.

Without torchrun (no WORLD_SIZE), everything is rank 0 of 1 and torch.distributed is not used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, group: int) -> bool:
        """Samples are dealt round-robin, so every rank gets a mix of tasks and lengths."""
        return group % self.world == self.rank


def init(device: str) -> Ranks:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                 int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def device_for(ranks: Ranks, device: str) -> str:
    if device == "cuda" and ranks.world > 1:
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return device


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def broadcast(ranks: Ranks, value):
    """Rank 0's value on every rank."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(ranks: Ranks, records: list[dict]) -> list[dict]:
    """All ranks' records on rank 0 (an empty list elsewhere)."""
    if ranks.world == 1:
        return records
    parts = [None] * ranks.world if ranks.main else None
    dist.gather_object(records, parts, dst=0)
    return [r for part in parts for r in part] if ranks.main else []


def finish(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
