"""Who the members are: checkpoints × perturbations × sign, their seeds and their blocks.

Member m of a run with K perturbations per checkpoint is checkpoint m // (2K), perturbation
(m % 2K) // 2 and sign + for even m, − for odd m: the ± pair of one perturbation sits side by
side, and a checkpoint's members are contiguous, so a block (the unit of work and of writing)
never needs two models. Seeds are hashed from (base seed, checkpoint, init time, perturbation),
so any member can be recomputed alone (DESIGN §2.3).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np
import torch


def member_seed(base_seed: int, checkpoint: str, init_time: np.datetime64, perturbation: int) -> int:
    """A 63-bit seed from (base seed, checkpoint name, init time, perturbation index)."""
    when = str(np.datetime64(init_time, "h"))
    digest = hashlib.blake2b(f"{int(base_seed)}|{checkpoint}|{when}|{int(perturbation)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclasses.dataclass(frozen=True)
class Block:
    """Members [start, stop) of one checkpoint: perturbations [start, stop) // 2 of it."""

    index: int
    checkpoint: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Layout:
    """The members of a run: `checkpoints` (names) × `perturbations` × (+, −)."""

    checkpoints: tuple[str, ...]
    perturbations: int

    def __post_init__(self):
        if not self.checkpoints:
            raise ValueError("an ensemble needs at least one checkpoint")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError(f"checkpoint names must be unique, got {list(self.checkpoints)}")
        if self.perturbations < 1:
            raise ValueError(f"perturbations must be >= 1, got {self.perturbations}")

    @property
    def per_checkpoint(self) -> int:
        return 2 * self.perturbations

    @property
    def size(self) -> int:
        return len(self.checkpoints) * self.per_checkpoint

    def coords(self) -> dict[str, np.ndarray]:
        m = np.arange(self.size)
        return {
            "member": m,
            "checkpoint": np.asarray(self.checkpoints)[m // self.per_checkpoint],
            "perturbation": (m % self.per_checkpoint) // 2,
            "sign": np.where(m % 2 == 0, 1, -1).astype(np.int8),
        }

    def blocks(self, block_size: int) -> list[Block]:
        """Blocks of at most `block_size` members (rounded down to whole ± pairs), never
        straddling two checkpoints."""
        pairs = max(1, block_size // 2)
        out = []
        for c in range(len(self.checkpoints)):
            base = c * self.per_checkpoint
            for p in range(0, self.perturbations, pairs):
                stop = min(p + pairs, self.perturbations)
                out.append(Block(len(out), c, base + 2 * p, base + 2 * stop))
        return out

    def block_of(self, member: int, block_size: int) -> Block:
        if not 0 <= member < self.size:
            raise ValueError(f"member {member} is not in this ensemble of {self.size}")
        return next(b for b in self.blocks(block_size) if b.start <= member < b.stop)

    def seeds(self, block: Block, base_seed: int, init_time: np.datetime64) -> list[int]:
        """One seed per perturbation in the block."""
        name = self.checkpoints[block.checkpoint]
        first = (block.start % self.per_checkpoint) // 2
        return [member_seed(base_seed, name, init_time, first + i) for i in range(block.size // 2)]

    def noise_seeds(self, block: Block, base_seed: int, init_time: np.datetime64) -> list[int]:
        """One model-noise seed per member of the block (a stochastic checkpoint's own noise
        stream), hashed from the member's identity like the perturbation seeds: the two
        members of a ± pair have streams of their own."""
        name = f"{self.checkpoints[block.checkpoint]}|model-noise"
        first = block.start % self.per_checkpoint
        return [member_seed(base_seed, name, init_time, first + i) for i in range(block.size)]

    def breeding_noise_seed(self, block: Block, base_seed: int, init_time: np.datetime64) -> int:
        """The model-noise seed of a stochastic checkpoint's breeding: one per checkpoint and
        init time, shared by the control and every perturbed state, so a bred vector measures
        the dynamics' growth, not the noise's (and stays the same in any block)."""
        return member_seed(base_seed, f"{self.checkpoints[block.checkpoint]}|breeding-noise", init_time, 0)


def compose(analysis: torch.Tensor, deltas: torch.Tensor, non_negative: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    """Centred pairs: (2K, channel, lat, lon) = analysis + delta_0, analysis − delta_0, ...,
    with non-negative channels (humidity, tcwv, precipitation) clipped at 0."""
    plus, minus = analysis[None] + deltas, analysis[None] - deltas
    members = torch.stack([plus, minus], dim=1).reshape(-1, *analysis.shape)
    mask = torch.as_tensor(non_negative, dtype=torch.bool, device=members.device).view(1, -1, 1, 1)
    return torch.where(mask, members.clamp_min(0.0), members)
