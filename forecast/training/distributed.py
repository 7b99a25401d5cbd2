"""Data-parallel training across processes (`torchrun`): gloo on CPU, NCCL on GPUs.

The model is wrapped in torch's `DistributedDataParallel` (`wrap`): it broadcasts rank 0's
weights when it wraps and averages the gradients during the backward pass (bucketed
all-reduces, overlapped with the computation), so every rank applies the same update and the
ranks' weights stay identical; `weight_digests` checks that they did. Every collective runs on
the process group's device (`Ranks.device`: the rank's GPU under NCCL, the CPU under gloo).
Outside `torchrun` (no WORLD_SIZE > 1) everything here is a no-op and the model is not wrapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where this rank computes and its collectives run

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks(device=device), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, **({"device_id": device} if device.type == "cuda" else {}))
    return Ranks(dist.get_rank(), dist.get_world_size(), device), device


def teardown(ranks: Ranks, wait: bool = True) -> None:
    """Leave the process group, after a barrier unless `wait` is False (when the last
    collective has already run on every rank)."""
    if ranks.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


def wrap(module: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """`module` for the training steps: under DDP when there are several ranks (it must already
    be on `ranks.device`), else itself. Keep the unwrapped module for everything but the
    training forward pass: its state_dict has no `module.` prefixes, and its forward calls run
    no collectives (validation and scoring may differ in length between ranks).
    DDP broadcasts rank 0's parameters; its buffers (normalisation statistics, static fields)
    are broadcast here once too, so every rank runs rank 0's model even if the ranks read the
    archive's statistics at different moments. They never change, so they are not broadcast
    again before every forward pass."""
    if not ranks.enabled:
        return module
    for b in module.buffers():
        dist.broadcast(b.data, src=0)
    device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def global_mean(total: float, count: int, ranks: Ranks) -> float | None:
    """Mean of per-rank sums over all ranks (None when no rank had any item)."""
    if ranks.enabled:
        t = torch.tensor([total, float(count)], dtype=torch.float64, device=ranks.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        total, count = (float(v) for v in t.cpu())
        count = int(count)
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
