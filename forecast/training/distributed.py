"""Data-parallel training across processes (`torchrun`): gloo on CPU, NCCL on GPUs.

Gradients are averaged with an all-reduce after each backward pass, so every rank applies the
same update and the ranks' weights stay identical; `weight_digests` checks that they did.
Outside `torchrun` (no WORLD_SIZE > 1) everything here is a no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def teardown(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


def broadcast_parameters(module: torch.nn.Module, ranks: Ranks) -> None:
    if ranks.enabled:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(module: torch.nn.Module, ranks: Ranks) -> None:
    if ranks.enabled:
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= ranks.world_size


def global_mean(total: float, count: int, ranks: Ranks) -> float | None:
    """Mean of per-rank sums over all ranks (None when no rank had any item)."""
    if ranks.enabled:
        t = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        total, count = float(t[0]), int(t[1])
    return total / count if count else None


def weight_digests(module: torch.nn.Module, ranks: Ranks) -> list[str]:
    """sha256 of this rank's parameters, gathered from every rank (rank order)."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    mine = h.hexdigest()
    if not ranks.enabled:
        return [mine]
    out: list = [None] * ranks.world_size
    dist.all_gather_object(out, mine)
    return out
