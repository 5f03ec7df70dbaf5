"""Evaluation over exactly one split when several processes share it.

PyTorch's ``DistributedSampler`` pads a split so every rank gets the same number of
samples: with 2 ranks and 4,001 test images one image is scored twice. For training
that is harmless; for reported metrics, thresholds and figures it is not. Validation and
test therefore shard with Lightning's ``UnrepeatedDistributedSampler`` (shards may differ
by one image) and gather per-image results with :func:`gather_uneven`. Both are no-ops
in a single process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler
from torchmetrics.utilities.distributed import gather_all_tensors


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """Every image of ``dataset`` exactly once across the ranks, in order; None (the
    loader's own sequential order) outside DDP. Lightning keeps a ``DistributedSampler``
    it is given instead of replacing it with its padding one."""
    if not distributed():
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


def gather_uneven(tensor: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``tensor`` from every rank concatenated along dim 0 in rank order (rank 0 first);
    the ranks may hold different lengths. ``device`` is where the collective runs (CUDA
    for NCCL); the result comes back on ``tensor``'s device."""
    if not distributed():
        return tensor
    parts = gather_all_tensors(tensor.to(device or tensor.device).contiguous())
    return torch.cat(parts).to(tensor.device)


def gather_objects(obj):
    """A small picklable object from every rank, as a list in rank order ([obj] alone)."""
    if not distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
