"""The training order as a function of (seed, epoch): resumable mid-epoch, the same on every rank.

A killed run that resumes from a mid-epoch checkpoint must draw the rest of that epoch's
batches, in the order the uninterrupted run would have. torch's ``RandomSampler`` draws a new
order from the global RNG each epoch and cannot start part-way; Lightning only restores a
loader's position when the loader is stateful, and counts it one batch off (its fetcher has
already taken the next batch when a checkpoint is saved). So the order here is computed from
the run's seed and the epoch alone (``DistributedSampler``'s rule: ``seed + epoch``), and
:meth:`ResumableSampler.start_at` skips the batches the checkpoint says are done
(:meth:`~crack_lightning.data.datamodule.CrackDataModule.state_dict` reads them from Lightning's
loop state; :class:`~crack_lightning.callbacks.exact_resume.ExactResume` restores the RNG states).

Being a ``DistributedSampler`` it also shards across DDP ranks itself (Lightning keeps a
``DistributedSampler`` it is given), so the balanced draws are sharded without Lightning's
``DistributedSamplerWrapper``.

Per-image augmentation (the JPEG path, in loader workers) draws from each process's own RNG
stream, whose position depends on the workers, the prefetching and the restart: with
``keyed=True`` the sampler yields :class:`Draw` items whose ``key`` seeds that image's
augmentation (``ImageListDataset``), a function of the seed, the epoch and the position.
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class Draw(NamedTuple):
    """One training image: its index in the dataset and the seed of its augmentation."""

    index: int
    key: int


def run_seed() -> int:
    """The seed of the order: ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0 -- Lightning's own
    rule for the ``DistributedSampler`` it makes, so every rank agrees without a seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """Shuffled (or, with ``weights``, drawn with replacement) training indices of one epoch.

    Args:
        length: the dataset's size.
        weights: per-image draw weights (``data.loader.sampler=balanced``); ``None``: a permutation.
        keyed: yield :class:`Draw` items instead of plain indices (per-image augmentation seeds).
        seed: default :func:`run_seed`.
    """

    def __init__(self, length: int, weights: Sequence[float] | None = None, keyed: bool = False,
                 seed: int | None = None):
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(range(length), num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=True,
                         seed=run_seed() if seed is None else seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.keyed = keyed
        self._skip = 0

    def start_at(self, samples: int) -> None:
        """The next iteration (only) begins ``samples`` into this rank's share of the epoch."""
        self._skip = max(0, samples)

    def __iter__(self) -> Iterator[int | Draw]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        if self.weights is None:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        order = order.tolist()
        order += order[: self.total_size - n]  # pad so every rank gets as many (DistributedSampler's rule)
        mine = order[self.rank:self.total_size:self.num_replicas]
        skip, self._skip = self._skip, 0
        if not self.keyed:
            return iter(mine[skip:])
        # a key per (seed, epoch, rank, position): the same image drawn twice is augmented twice differently
        base = (self.seed * 1_000_003 + self.epoch) * 65_537 + self.rank
        return iter(Draw(i, (base * 1_000_033 + pos) % (2**63 - 1)) for pos, i in enumerate(mine) if pos >= skip)

    def __len__(self) -> int:  # the epoch's full length: Lightning's num_training_batches
        return self.num_samples
