"""Image transforms, sized and normalised from the backbone's timm data config.

The ``augmentation`` config group builds a :class:`FlipRotate`; it gives the same
randomness two ways:

* :meth:`FlipRotate.pil` -- per image, on PIL images read from JPEG files
  (torchvision v2), in DataLoader workers;
* :meth:`FlipRotate.batch` -- per batch, on uint8 tensors from the decoded cache,
  on whatever device the batch is on (:class:`BatchFlipRotate`).

Evaluation always uses :func:`eval_transform` (or :class:`BatchNormalize`). All take
the dict returned by ``timm.data.resolve_data_config`` (``input_size``,
``interpolation``, ``mean``, ``std``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode, v2


def to_resized_image(data_config: dict) -> v2.Compose:
    """PIL image -> uint8 (3, H, W) tensor at the input size: the first step of every
    path; the decoded cache stores its output, so both paths see identical pixels."""
    interpolation = InterpolationMode(data_config.get("interpolation", "bilinear"))
    size = tuple(data_config["input_size"][-2:])
    return v2.Compose([v2.ToImage(), v2.Resize(size, interpolation=interpolation, antialias=True)])


def _to_float_normalised(data_config: dict) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data_config["mean"], data_config["std"])]


def eval_transform(data_config: dict) -> v2.Compose:
    """Resize the whole patch (no crop: a crack at the border must stay) and normalise."""
    return v2.Compose([to_resized_image(data_config)] + _to_float_normalised(data_config))


@dataclass
class FlipRotate:
    """Random flips and rotation, as the Keras seeds' ``RandomFlip`` + ``RandomRotation``.

    Args:
        hflip / vflip: probability of a horizontal / vertical flip.
        rotation: largest rotation as a fraction of a full turn, like Keras'
            ``RandomRotation(0.2)`` (= up to ±72°). Corners are filled with the
            normalisation mean, so they become zeros and carry no edge.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 0.0

    @property
    def random(self) -> bool:
        """Whether it changes an image at all (``augmentation=none`` is all zeros)."""
        return bool(self.hflip or self.vflip or self.rotation)

    def pil(self, data_config: dict) -> v2.Compose:
        """Per-image transform of PIL images: resize, flips, rotation, normalisation."""
        ops = [to_resized_image(data_config)]
        if self.hflip:
            ops.append(v2.RandomHorizontalFlip(self.hflip))
        if self.vflip:
            ops.append(v2.RandomVerticalFlip(self.vflip))
        if self.rotation:
            fill = [round(255 * m) for m in data_config["mean"]]
            ops.append(v2.RandomRotation(360 * self.rotation, interpolation=InterpolationMode.BILINEAR, fill=fill))
        return v2.Compose(ops + _to_float_normalised(data_config))

    def batch(self, data_config: dict) -> BatchFlipRotate:
        """The same on a uint8 (N, 3, H, W) batch already at the input size."""
        return BatchFlipRotate(data_config["mean"], data_config["std"], self.hflip, self.vflip, self.rotation)


class BatchNormalize(nn.Module):
    """uint8 (N, 3, H, W) -> float, scaled to [0, 1] and normalised; keeps the memory format."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("scale", 1 / (255 * torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1), False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).float().view(1, 3, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale - self.shift  # == (x / 255 - mean) / std, one pass


class BatchFlipRotate(BatchNormalize):
    """Per-sample random flips and rotation of a whole batch at once, on its device.

    Matches :meth:`FlipRotate.pil` in distribution: each image flips with its own
    probability and turns by its own angle, uniform in ±``rotation`` turns,
    bilinear, corners at the mean (zero after normalisation).
    ``tests/test_cache.py`` compares the two paths' statistics.
    """

    def __init__(self, mean, std, hflip: float = 0.5, vflip: float = 0.0, rotation: float = 0.0):
        super().__init__(mean, std)
        self.hflip, self.vflip, self.rotation = hflip, vflip, rotation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = super().forward(images)
        n = x.shape[0]
        for p, dim in ((self.hflip, -1), (self.vflip, -2)):
            if p:
                flip = (torch.rand(n, device=x.device) < p).view(n, 1, 1, 1)
                x = torch.where(flip, x.flip(dim), x)
        if self.rotation:
            angle = (torch.rand(n, device=x.device) * 2 - 1) * (2 * math.pi * self.rotation)
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
            h, w = x.shape[-2:]
            # affine_grid works in [-1, 1] coordinates; scale keeps non-square images undistorted
            theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1),
                                 torch.stack([sin * w / h, cos, zero], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x
