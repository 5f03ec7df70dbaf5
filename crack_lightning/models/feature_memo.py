"""A frozen backbone over images it has seen: their features from memory.

With ``augmentation=none`` every frozen epoch feeds the backbone the same training images (and
every epoch the same validation images): the backbone's answer is known after the first epoch,
so a frozen epoch need only be the head. :class:`FeatureMemo` keys each image by a hash of its
exact input tensor (an image changed in any bit is another key) and the backbone's weights (a
fingerprint: any change empties it), so it returns what the backbone would compute -- the very
numbers it computed the first time. It lives in :class:`~crack_lightning.models.frozen.FrozenBackbone`,
which turns it on for a frozen phase without augmentation on the CPU and drops it at the unfreeze.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

MAX_BYTES = 2 * 2**30  # 2 GiB of features: 40,000 MobileNetV2 images take 0.2 GiB; beyond, computed again


class FeatureMemo:
    """Features by image content, for one set of frozen weights."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._table: dict[bytes, torch.Tensor] = {}
        self._weights = None
        self.bytes = self.hits = self.misses = 0

    def __call__(self, images: torch.Tensor, weights, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The features of ``images`` (a CPU batch), from memory where seen with these ``weights``
        (a fingerprint), the rest by ``compute``."""
        if weights != self._weights:
            self.clear()
            self._weights = weights
        keys = [hashlib.blake2b(row.numpy(), digest_size=16).digest() for row in _rows(images.detach())]
        missing = [i for i, k in enumerate(keys) if k not in self._table]
        fresh = {}
        if missing:
            computed = compute(images if len(missing) == len(keys) else images[missing])
            fresh = dict(zip(missing, computed))
            for i, features in fresh.items():
                if self.bytes < self.max_bytes:
                    self._table[keys[i]] = features.clone()
                    self.bytes += features.numel() * features.element_size()
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return torch.stack([fresh[i] if i in fresh else self._table[k] for i, k in enumerate(keys)])

    def clear(self) -> None:
        if self.hits:
            log.info("Frozen features: %d of %d images came from memory", self.hits, self.hits + self.misses)
        self._table.clear()
        self.bytes = self.hits = self.misses = 0


def _rows(images: torch.Tensor) -> torch.Tensor:
    """Each image's values in one order whatever the batch's memory layout (channels last: what
    the model runs; a copy only for a batch in the other layout)."""
    return images.permute(0, 2, 3, 1).contiguous() if images.dim() == 4 else images.contiguous()
