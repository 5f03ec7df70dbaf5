"""Image transforms, sized and normalised from the backbone's timm data config.

The ``augmentation`` config group picks the training-time randomness; evaluation
always uses :func:`eval_transform`. Both take the dict returned by
``timm.data.resolve_data_config`` (``input_size``, ``interpolation``, ``mean``, ``std``).
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2


def _resize_and_tensor(data_config: dict) -> list:
    interpolation = InterpolationMode(data_config.get("interpolation", "bilinear"))
    return [v2.ToImage(), v2.Resize(tuple(data_config["input_size"][-2:]), interpolation=interpolation, antialias=True)]


def _to_float_normalised(data_config: dict) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data_config["mean"], data_config["std"])]


def eval_transform(data_config: dict) -> v2.Compose:
    """Resize the whole patch (no crop: a crack at the border must stay) and normalise."""
    return v2.Compose(_resize_and_tensor(data_config) + _to_float_normalised(data_config))


def train_transform(data_config: dict, hflip: float = 0.5, vflip: float = 0.0, rotation: float = 0.0) -> v2.Compose:
    """Random flips and rotation after resizing.

    Args:
        hflip / vflip: probability of a horizontal / vertical flip.
        rotation: largest rotation as a fraction of a full turn, like Keras'
            ``RandomRotation(0.2)`` (= up to ±72°). Corners are filled with the
            normalisation mean, so they become zeros and carry no edge.
    """
    ops = _resize_and_tensor(data_config)
    if hflip:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if vflip:
        ops.append(v2.RandomVerticalFlip(vflip))
    if rotation:
        fill = [round(255 * m) for m in data_config["mean"]]
        ops.append(v2.RandomRotation(360 * rotation, interpolation=InterpolationMode.BILINEAR, fill=fill))
    return v2.Compose(ops + _to_float_normalised(data_config))
