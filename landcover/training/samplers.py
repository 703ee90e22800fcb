"""Samplers that shard tiles between distributed ranks themselves (train: a capped random draw per
epoch; val/test: every tile exactly once), instead of Lightning's ``DistributedSampler``, which
ignores a per-epoch cap and pads evaluation with repeated tiles."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process in torch.distributed's default group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """A CPU generator for one rank's random draws of one epoch (training augmentation), seeded from
    (seed, rank, epoch) alone: ranks draw differently although they share the global seed, and a resumed
    run draws what the interrupted one would have from the same epoch on."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0]))


class EpochSampler(Sampler[int]):
    """This rank's share of ``num_samples`` tiles drawn per epoch (training).

    Every epoch draws ``ceil(num_samples / world_size) * world_size`` indices from a generator
    seeded with (seed, epoch) alone: uniform draws are random permutations of the tiles (no tile
    twice before every tile once, like ``RandomSampler``), weighted draws are with replacement.
    Rank r takes draws r, r + world, ...: the ranks share the cap, disjointly, and the draws
    depend on the seed and the epoch only (``set_epoch``, called by Lightning every epoch).
    """

    def __init__(
        self, size: int, num_samples: int, *, seed: int, weights: Any = None, rank: int = 0, world_size: int = 1
    ) -> None:
        if size < 1 or num_samples < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"EpochSampler needs tiles, samples and 0 <= rank < world_size, got "
                f"size={size}, num_samples={num_samples}, rank={rank}, world_size={world_size}"
            )
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.per_rank = math.ceil(num_samples / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Any:
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        total = self.per_rank * self.world_size
        if self.weights is None:
            passes = math.ceil(total / self.size)
            draws = torch.cat([torch.randperm(self.size, generator=generator) for _ in range(passes)])[:total]
        else:
            draws = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(draws[self.rank :: self.world_size].tolist())


class ShardSampler(Sampler[int]):
    """Evaluation: tiles rank, rank + world, ... in order; the ranks' shards are disjoint and cover
    every tile exactly once (no padding with repeated tiles, unlike ``DistributedSampler``)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Any:
        return iter(self.indices)
