"""Dense whole-photo inference: the backbone runs once over the photo, and every window is
pooled from its feature map.

MobileNetV2, EfficientNet, our CNN -- any backbone that is convolutional up to its global
pool -- give a window's features as the pool of the feature map over the window's cells. So a
photo costs about one forward pass of its own size instead of one per window (a 4032x3024
photo at 224 px: ~4x fewer pixels through the network than cropping every half window).

The photo is resized by the model's scale (input size / training patch size), its sides
rounded to whole feature cells, and cut into blocks of at most ``block_megapixels`` that hold
whole windows (plus ``MARGIN`` cells of context), so memory is bounded for any photo. Window
starts are every ``stride`` cells plus one flush with the far edge, as in windows mode
(:func:`~crack_lightning.inference.tiling.starts`). Inside a block a window sees its
neighbours through the receptive field where a cropped window sees padding, so probabilities
differ from windows mode's (BENCHMARKS.md: max |dp| and correlation on a trained model).

:class:`DenseWindows` is the exportable part (torch and ONNX run the same module): a uint8
block in, the logits of the chosen windows out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.layers import SelectAdaptivePool2d
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from crack_lightning import CrackLightningError
from crack_lightning.inference.tiling import starts

# Feature cells of context beyond a block's windows. 0: a window at a block's edge sees padding on
# that side, as a cropped one does. More changed the agreement with windows mode by < 0.002 in
# correlation on a trained MobileNetV2 and cost 10-30 % more pixels through the network.
MARGIN = 0
POOLS = ("avg", "max", "avgmax")  # timm global pools that pooling a window reproduces exactly


class DenseUnsupported(CrackLightningError):
    """The backbone has no convolutional feature map that windows can be pooled from."""


@dataclass(frozen=True)
class Geometry:
    """How windows map onto a backbone's feature map."""

    window: tuple[int, int]  # a window (the model's input) in feature cells
    reduction: int  # model pixels per feature cell
    pool: str  # the backbone's global pool, applied to each window's cells

    def to_metadata(self) -> dict[str, str]:
        return {"dense_window_cells": f"{self.window[0]},{self.window[1]}", "dense_reduction": str(self.reduction),
                "dense_pool": self.pool}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> Geometry:
        h, w = (int(v) for v in meta["dense_window_cells"].split(","))
        return cls((h, w), int(meta["dense_reduction"]), meta["dense_pool"])


def geometry(model: nn.Module, input_size: tuple[int, int]) -> Geometry:
    """The window's cells, the feature stride and the pool of ``model.backbone``, probed with two
    forward passes; :class:`DenseUnsupported` when windows cannot be pooled from its features."""
    backbone = model.backbone
    name = type(backbone).__name__
    pools = [m.pool_type for m in backbone.modules() if isinstance(m, SelectAdaptivePool2d)]
    if len(pools) != 1 or pools[0] not in POOLS:
        raise DenseUnsupported(f"backbone {name} has no single global pool of type {'/'.join(POOLS)} "
                               f"(found {pools or 'none'}); use tile_mode=windows.")
    param = next(backbone.parameters())
    with torch.no_grad():
        small = backbone.forward_features(torch.zeros(1, 3, *input_size, dtype=param.dtype, device=param.device))
        big = backbone.forward_features(torch.zeros(1, 3, *(2 * s for s in input_size), dtype=param.dtype,
                                                    device=param.device))
    if small.ndim != 4 or big.ndim != 4:
        raise DenseUnsupported(f"backbone {name}'s features are not a (N, C, H, W) map (shape "
                               f"{tuple(small.shape)}); use tile_mode=windows.")
    window = tuple(int(v) for v in small.shape[-2:])
    reduction = round(2 * input_size[0] / big.shape[-2])
    if reduction < 1 or big.shape[-2] < 2 * window[0] - 1:
        raise DenseUnsupported(f"backbone {name}'s feature map does not grow with the image; use tile_mode=windows.")
    return Geometry(window, reduction, pools[0])


class DenseWindows(nn.Module):
    """uint8 RGB block ``[1, H, W, 3]`` (already at the model's scale) and the feature-cell
    ``rows`` and ``cols`` where windows start -> the logits of those windows ``[rows * cols, K]``,
    row by row: normalisation, backbone features, each window's pool, the backbone's head and ours."""

    def __init__(self, model: nn.Module, geometry: Geometry, mean, std):
        super().__init__()
        self.model, self.geometry = model, geometry
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("scale", 1 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255))
        self.memory_format = getattr(model, "memory_format", torch.contiguous_format)

    def forward(self, block: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        x = (block.permute(0, 3, 1, 2).float() - self.shift) * self.scale
        features = self.model.backbone.forward_features(x.contiguous(memory_format=self.memory_format))
        pooled = self._pool(features)  # every window position, stride 1
        pooled = pooled.index_select(2, rows).index_select(3, cols)
        tokens = pooled.permute(0, 2, 3, 1).reshape(-1, pooled.shape[1], 1, 1)
        return self.model.head(self.model.backbone.forward_head(tokens))  # its global pool of 1x1: the window's

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        kernel = self.geometry.window
        if self.geometry.pool == "avg":
            return F.avg_pool2d(features, kernel, stride=1)
        if self.geometry.pool == "max":
            return F.max_pool2d(features, kernel, stride=1)
        return 0.5 * (F.avg_pool2d(features, kernel, stride=1) + F.max_pool2d(features, kernel, stride=1))


class Block(NamedTuple):
    """A rectangle of the scaled photo in feature cells, and the window starts inside it."""

    top: int
    bottom: int
    left: int
    right: int
    rows: list[int]  # window starts, in cells from the block's top
    cols: list[int]


def _groups(first: list[int], window: int, length: int, max_cells: int) -> list[tuple[int, int, list[int]]]:
    """Window starts along one axis grouped so that a group's span, with MARGIN cells of context
    each side where the photo has them, is at most ``max_cells``: (lo, hi, starts - lo) per group."""
    out, group = [], []
    for s in first:
        if group and s + window + MARGIN - max(0, group[0] - MARGIN) > max_cells:
            out.append(group)
            group = []
        group.append(s)
    out.append(group)
    spans = [(max(0, g[0] - MARGIN), min(length, g[-1] + window + MARGIN), g) for g in out]
    return [(lo, hi, [s - lo for s in g]) for lo, hi, g in spans]


def cell_steps(stride: tuple[int, int], size: tuple[int, int], input_size: tuple[int, int],
               reduction: int) -> list[int]:
    """The stride in whole feature cells: the nearest to ``stride`` px at the model's scale, at least one."""
    return [max(1, round(st * i / s / reduction)) for st, i, s in zip(stride, input_size, size)]


def _native(first: list[int], length: int, cells: int, window: int, size: int) -> list[int]:
    """Window starts in feature cells -> in the photo's pixels: the window flush with the far edge
    stays flush (no pixel left uncovered by rounding), none runs past it."""
    return [length - size if c + window == cells else min(round(c * length / cells), length - size) for c in first]


@dataclass
class Plan:
    """Where the windows of one photo are, in the photo's pixels and in feature cells."""

    scaled: tuple[int, int]  # the photo's size at the model's scale, whole cells
    size: tuple[int, int]  # a window's footprint in the photo's pixels (the window size, give or take a rounding)
    row_cells: list[int]
    col_cells: list[int]
    tops: list[int]  # native pixels, one per row of windows
    lefts: list[int]
    blocks: list[Block]


def plan(height: int, width: int, size: tuple[int, int], stride: tuple[int, int], input_size: tuple[int, int],
         geo: Geometry, block_megapixels: float) -> Plan | None:
    """The windows and blocks of a ``height`` x ``width`` photo, or ``None`` when it is smaller than a
    window on a side (windows mode takes it whole, as it does any patch)."""
    if height < size[0] or width < size[1]:
        return None
    r, (wh, ww) = geo.reduction, geo.window
    cells = [max(win, round(n * i / s / r)) for n, i, s, win in zip((height, width), input_size, size, (wh, ww))]
    step = cell_steps(stride, size, input_size, r)
    row_cells, col_cells = starts(cells[0], wh, step[0]), starts(cells[1], ww, step[1])
    # a window's footprint on this photo: the model's input, at the photo's own (rounded) scale
    footprint = (round(wh * height / cells[0]), round(ww * width / cells[1]))
    tops = _native(row_cells, height, cells[0], wh, footprint[0])
    lefts = _native(col_cells, width, cells[1], ww, footprint[1])
    budget = max(1, int(block_megapixels * 1e6 / (r * r)))  # cells per block
    # about square blocks (a long thin one holds few whole windows for its area); columns first
    col_groups = _groups(col_cells, ww, cells[1], max(ww + 2 * MARGIN, math.isqrt(budget)))
    widest = max(hi - lo for lo, hi, _ in col_groups)
    row_groups = _groups(row_cells, wh, cells[0], max(wh + 2 * MARGIN, budget // widest))
    blocks = [Block(t, b, lft, rgt, rs, cs) for t, b, rs in row_groups for lft, rgt, cs in col_groups]
    return Plan((cells[0] * r, cells[1] * r), footprint, row_cells, col_cells, tops, lefts, blocks)


def scaled_photo(photo: Image.Image, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """The photo at the model's scale as uint8 (H, W, 3), resized as :func:`eval_transform`
    resizes a patch (torchvision, antialiased)."""
    image = torch.from_numpy(np.array(photo)).permute(2, 0, 1)  # (a copy: torch wants it writable)
    resized = TF.resize(image, list(size), interpolation=InterpolationMode(interpolation), antialias=True)
    return resized.permute(1, 2, 0)


def dense_probabilities(scaled: torch.Tensor, the_plan: Plan, reduction: int,
                        score: Callable[[torch.Tensor, list[int], list[int]], tuple[np.ndarray, np.ndarray]],
                        advance: Callable[[int], None] = lambda k: None) -> tuple[np.ndarray, np.ndarray]:
    """Every window's crack probability and class probabilities, ``(rows, cols)`` and
    ``(rows, cols, K)``, block by block through ``score(block, rows, cols)`` (a backend's
    ``dense_scores``)."""
    crack = every = None
    row_index = {c: i for i, c in enumerate(the_plan.row_cells)}
    col_index = {c: j for j, c in enumerate(the_plan.col_cells)}
    for b in the_plan.blocks:
        block = scaled[b.top * reduction:b.bottom * reduction, b.left * reduction:b.right * reduction]
        p, q = score(block.unsqueeze(0).contiguous(), b.rows, b.cols)
        if crack is None:
            crack = np.full((len(the_plan.row_cells), len(the_plan.col_cells)), np.nan, np.float32)
            every = np.full((*crack.shape, q.shape[-1]), np.nan, np.float32)
        i = [row_index[b.top + r] for r in b.rows]
        j = [col_index[b.left + c] for c in b.cols]
        crack[np.ix_(i, j)] = np.asarray(p, np.float32).reshape(len(i), len(j))
        every[np.ix_(i, j)] = np.asarray(q, np.float32).reshape(len(i), len(j), -1)
        advance(len(i) * len(j))
    return crack, every
