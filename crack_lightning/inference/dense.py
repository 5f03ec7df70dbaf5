"""Dense whole-photo inference: the backbone runs over the photo once, and every window is
pooled from the stitched feature map.

MobileNetV2, EfficientNet, our CNN -- any backbone that is convolutional up to its global
pool -- give a window's features as the pool of the feature map over the window's cells. So a
photo costs about one forward pass of its own size instead of one per window (a 4032x3024
photo at 224 px: ~4x fewer pixels through the network than cropping every half window).

The photo is resized by the model's scale (input size / training patch size), its sides
rounded to whole feature cells, and cut into tiles of whole cells of at most
``block_megapixels`` each -- one forward pass each, small enough that activations stay in
cache (a 2-Mpx pass ran ~25 % slower per pixel than a 0.8-Mpx one here). The tiles' feature
maps are stitched, no pixel goes through the network twice, and windows are pooled from the
stitched rows as soon as they are complete, so memory holds a band of a tile row plus a
window, not the photo: bounded for any photo (a photo wider than ``STRIP_TILES`` tiles is
cut into strips of whole windows, too). Window starts are every ``stride`` cells plus one
flush with the far edge, as in windows mode (:func:`~crack_lightning.inference.tiling.starts`).
A window sees its neighbours through the receptive field where a cropped window sees padding,
and padding at the seams of tiles, so probabilities differ from windows mode's (BENCHMARKS.md:
max |dp| and correlation on a trained model).

:class:`DenseFeatures` and :class:`DenseHead` are the exportable parts (torch and ONNX run the
same modules): uint8 tiles in, their feature maps out; a stitched feature map and window
starts in, the windows' logits out.
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

# A strip is at most this many tiles wide: what bounds the band of feature rows held for a very
# wide photo (16 tiles of 28 x 28 cells of 1280 channels: ~80 MB); real photos are one strip.
STRIP_TILES = 16
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


class DenseFeatures(nn.Module):
    """uint8 RGB tiles ``[B, H, W, 3]`` at the model's scale -> the backbone's feature maps
    ``[B, C, H / r, W / r]``: normalisation and ``forward_features``."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.backbone = model.backbone
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("scale", 1 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255))
        self.memory_format = getattr(model, "memory_format", torch.contiguous_format)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = (tiles.permute(0, 3, 1, 2).float() - self.shift) * self.scale
        return self.backbone.forward_features(x.contiguous(memory_format=self.memory_format))


class DenseHead(nn.Module):
    """A stitched feature map ``[1, C, H, W]`` and the feature-cell ``rows`` and ``cols`` where
    windows start -> the logits of those windows ``[rows * cols, K]``, row by row: each window's
    pool, the backbone's head and ours."""

    def __init__(self, model: nn.Module, geometry: Geometry):
        super().__init__()
        self.model, self.geometry = model, geometry

    def forward(self, features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
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


class Strip(NamedTuple):
    """Columns ``left:right`` of the scaled photo in feature cells, the windows' starts in it
    (cells from ``left``) and the index of its first window column."""

    left: int
    right: int
    cols: list[int]
    first: int


def _strips(first: list[int], window: int, max_cells: int) -> list[Strip]:
    """Window starts along the width grouped into strips of at most ``max_cells`` (or one window)."""
    groups, group = [], []
    for s in first:
        if group and s + window - group[0] > max_cells:
            groups.append(group)
            group = []
        group.append(s)
    groups.append(group)
    out, j = [], 0
    for g in groups:
        out.append(Strip(g[0], g[-1] + window, [s - g[0] for s in g], j))
        j += len(g)
    return out


def splits(lo: int, hi: int, tile: int) -> list[tuple[int, int]]:
    """``lo:hi`` cut into the fewest near-equal parts of at most ``tile`` cells (no sliver of a
    cell or two at the far edge)."""
    n = -(-(hi - lo) // tile)
    edges = [lo + round(k * (hi - lo) / n) for k in range(n + 1)]
    return list(zip(edges, edges[1:]))


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
    """Where the windows of one photo are, in the photo's pixels and in feature cells, and the
    tiles the scaled photo goes through the network in."""

    scaled: tuple[int, int]  # the photo's size at the model's scale, whole cells
    size: tuple[int, int]  # a window's footprint in the photo's pixels (the window size, give or take a rounding)
    row_cells: list[int]
    col_cells: list[int]
    tops: list[int]  # native pixels, one per row of windows
    lefts: list[int]
    geometry: Geometry
    tile: int  # a tile's largest side, in cells
    strips: list[Strip]

    def tile_rows(self) -> list[tuple[int, int]]:
        return splits(0, self.scaled[0] // self.geometry.reduction, self.tile)

    def tile_cols(self, strip: Strip) -> list[tuple[int, int]]:
        return splits(strip.left, strip.right, self.tile)

    def tiles(self) -> list[tuple[int, int, int, int]]:
        """(top, bottom, left, right) in cells of every tile, strip by strip."""
        return [(t, b, lo, hi) for s in self.strips for t, b in self.tile_rows() for lo, hi in self.tile_cols(s)]


def plan(height: int, width: int, size: tuple[int, int], stride: tuple[int, int], input_size: tuple[int, int],
         geo: Geometry, block_megapixels: float) -> Plan | None:
    """The windows and tiles of a ``height`` x ``width`` photo, or ``None`` when it is smaller than a
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
    tile = max(wh, ww, math.isqrt(max(1, int(block_megapixels * 1e6 / (r * r)))))  # square tiles, cells a side
    return Plan((cells[0] * r, cells[1] * r), footprint, row_cells, col_cells, tops, lefts, geo, tile,
                _strips(col_cells, ww, max(ww, STRIP_TILES * tile)))


def scaled_photo(photo: Image.Image, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """The photo at the model's scale as uint8 (H, W, 3), resized as :func:`eval_transform`
    resizes a patch (torchvision, antialiased)."""
    image = torch.from_numpy(np.array(photo)).permute(2, 0, 1)  # (a copy: torch wants it writable)
    resized = TF.resize(image, list(size), interpolation=InterpolationMode(interpolation), antialias=True)
    return resized.permute(1, 2, 0)


def dense_probabilities(scaled: torch.Tensor, the_plan: Plan, features: Callable[[torch.Tensor], torch.Tensor],
                        score: Callable[[torch.Tensor, list[int], list[int]], tuple[np.ndarray, np.ndarray]],
                        advance: Callable[[int], None] = lambda k: None) -> tuple[np.ndarray, np.ndarray]:
    """Every window's crack probability and class probabilities, ``(rows, cols)`` and
    ``(rows, cols, K)``. Per strip, a row of tiles at a time goes through ``features(tiles)`` (a
    backend's ``dense_features``) and is stitched onto a band of feature rows; each row of windows
    goes through ``score(band, rows, cols)`` (``dense_scores``) once its cells are all there, and
    the rows no window below needs are let go."""
    r, wh = the_plan.geometry.reduction, the_plan.geometry.window[0]
    crack = np.full((len(the_plan.row_cells), len(the_plan.col_cells)), np.nan, np.float32)
    every = None
    for strip in the_plan.strips:
        band, band_top, pending = None, 0, list(enumerate(the_plan.row_cells))
        for top, bottom in the_plan.tile_rows():
            row = torch.cat([features(scaled[top * r:bottom * r, lo * r:hi * r].unsqueeze(0).contiguous())
                             for lo, hi in the_plan.tile_cols(strip)], dim=-1)
            band = row if band is None else torch.cat([band, row], dim=-2)
            ready = [(i, c) for i, c in pending if c + wh <= bottom]
            if ready:
                lo, hi = ready[0][1], ready[-1][1] + wh
                p, q = score(band[..., lo - band_top:hi - band_top, :], [c - lo for _, c in ready], strip.cols)
                if every is None:
                    every = np.full((*crack.shape, q.shape[-1]), np.nan, np.float32)
                rows, cols = [i for i, _ in ready], slice(strip.first, strip.first + len(strip.cols))
                crack[rows, cols] = np.asarray(p, np.float32).reshape(len(rows), -1)
                every[rows, cols] = np.asarray(q, np.float32).reshape(len(rows), len(strip.cols), -1)
                advance(len(rows) * len(strip.cols))
                pending = pending[len(ready):]
            if not pending:
                break
            keep = pending[0][1]
            band, band_top = band[..., keep - band_top:, :], keep
    return crack, every
