"""Whole photos: slide a training-sized window over the photo at native resolution.

The model was trained on 227x227 patches cut from camera photos, so a whole photo is
classified window by window, each window cropped at native resolution and then
preprocessed exactly as a training patch (:func:`eval_transform`). A window is a crack
when its crack probability -- the backend's, of any crack class when the model has more --
is above the threshold; the photo is when any window is.

Memory stays bounded whatever the photo size: windows are generated lazily and
cropped batch by batch, and overlaps are averaged on the grid cut by the window edges
(a few thousand cells, exact), never on per-tile copies or a per-pixel float image.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from crack_lightning.data.dataset import to_rgb
from crack_lightning.utils.files import atomic_path
from crack_lightning.reports.heatmap import draw_heatmap, photo_room
from crack_lightning.reports.plots import save_pixels

ORIENTATION = 0x0112  # EXIF tag
TILE_COLUMNS = ["top", "left", "height", "width", "crack_probability"]


class Window(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, plus one flush with the far edge so
    the last pixels are covered when ``length - size`` is no multiple of ``stride``."""
    if length <= size:
        return [0]
    out = list(range(0, length - size + 1, stride))
    if out[-1] != length - size:
        out.append(length - size)
    return out


def windows(height: int, width: int, size: tuple[int, int], stride: tuple[int, int]) -> Iterator[Window]:
    """Every window, row by row, lazily. A photo smaller than the window on an axis is
    taken whole on that axis (the transform resizes it as it resizes any patch)."""
    return windows_at(height, width, size, starts(height, size[0], stride[0]), starts(width, size[1], stride[1]))


def windows_at(height: int, width: int, size: tuple[int, int], tops: list[int], lefts: list[int]) -> Iterator[Window]:
    """The windows starting at every ``tops`` x ``lefts``, row by row, lazily, cut to the photo."""
    h, w = min(size[0], height), min(size[1], width)
    return (Window(top, left, h, w) for top in tops for left in lefts)


def batches(image: np.ndarray, wins: Iterator[Window], batch_size: int,
            transform) -> Iterator[tuple[list[Window], torch.Tensor]]:
    """(windows, preprocessed crops) of ``batch_size`` windows at a time from a uint8
    (H, W, 3) image; only one batch of crops exists at any time.

    Crops are copied row by row as the photo is stored (H, W, 3) and handed on as a
    channels-last (N, 3, h, w) view: the format the uint8 resize kernel and the model
    both prefer.
    """
    wins = iter(wins)
    while batch := list(islice(wins, batch_size)):
        crops = torch.from_numpy(np.stack([image[t:t + h, l:l + w] for t, l, h, w in batch])).permute(0, 3, 1, 2)
        yield batch, transform(crops)


class TileGrid:
    """Average of the tile probabilities covering each pixel, kept per cell of the grid
    that all window edges cut the photo into: every pixel of a cell is covered by the
    same windows, so the cell mean *is* the per-pixel mean."""

    def __init__(self, height: int, width: int, size: tuple[int, int], tops: list[int], lefts: list[int]):
        self.height, self.width = height, width
        self.ys = self._edges(height, size[0], tops)
        self.xs = self._edges(width, size[1], lefts)
        self.total = np.zeros((len(self.ys) - 1, len(self.xs) - 1), np.float64)
        self.count = np.zeros(self.total.shape, np.int32)

    @staticmethod
    def _edges(length: int, size: int, first: list[int]) -> np.ndarray:
        return np.array(sorted({0, length, *first, *(min(v + size, length) for v in first)}))

    def add(self, window: Window, probability: float) -> None:
        i0, i1 = np.searchsorted(self.ys, [window.top, window.top + window.height])
        j0, j1 = np.searchsorted(self.xs, [window.left, window.left + window.width])
        self.total[i0:i1, j0:j1] += probability
        self.count[i0:i1, j0:j1] += 1

    def mean(self) -> np.ndarray:
        """Per-cell average (NaN where no window reached: never, if the windows cover the photo)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.total / self.count).astype(np.float32)

    def resample(self, out_h: int, out_w: int) -> np.ndarray:
        """The per-pixel average map at ``out_h`` x ``out_w``, sampled at pixel centres:
        at the photo's own size it is exact, smaller it is a nearest-neighbour preview."""
        rows = np.searchsorted(self.ys, (np.arange(out_h) + 0.5) * self.height / out_h, side="right") - 1
        cols = np.searchsorted(self.xs, (np.arange(out_w) + 0.5) * self.width / out_w, side="right") - 1
        return self.mean()[np.ix_(rows, cols)]

    def area_fraction(self, threshold: float) -> float:
        """Share of the photo's pixels whose averaged probability is above ``threshold``."""
        area = np.outer(np.diff(self.ys), np.diff(self.xs))
        return float(area[self.mean() > threshold].sum() / area.sum())


@dataclass
class PhotoResult:
    max_probability: float
    crack_area_fraction: float
    tiles: int
    crack_tiles: int
    height: int
    width: int

    def verdict(self, threshold: float) -> bool:
        """Crack if any window scores above the threshold: one cracked patch is a crack."""
        return self.max_probability > threshold


@dataclass
class PhotoScores:
    """Every window's crack probability and their averaged map: what the model says of a photo,
    before any threshold -- so a new threshold (the app's slider) costs no forward pass. Windows
    start at every ``tops`` x ``lefts``, row by row."""

    grid: TileGrid
    probabilities: np.ndarray  # per window, in the order of :meth:`windows`
    size: tuple[int, int]
    tops: list[int]
    lefts: list[int]
    classes: np.ndarray | None = None  # every class's probability at the most crack-like window

    def windows(self) -> Iterator[Window]:
        return windows_at(self.grid.height, self.grid.width, self.size, self.tops, self.lefts)

    def at(self, threshold: float) -> PhotoResult:
        p = self.probabilities
        return PhotoResult(float(p.max()) if len(p) else 0.0, self.grid.area_fraction(threshold), len(p),
                           int((p > threshold).sum()), self.grid.height, self.grid.width)

    @classmethod
    def of(cls, height: int, width: int, size: tuple[int, int], tops: list[int], lefts: list[int],
           probabilities: np.ndarray, classes: np.ndarray | None = None) -> PhotoScores:
        """The scores of windows at ``tops`` x ``lefts`` (probabilities row by row), with their map."""
        scores = cls(TileGrid(height, width, size, tops, lefts), np.asarray(probabilities, np.float32).reshape(-1),
                     size, list(tops), list(lefts), classes)
        for win, p in zip(scores.windows(), scores.probabilities.tolist()):
            scores.grid.add(win, p)
        return scores

    def write_csv(self, path: Path) -> Path:
        """The per-tile CSV (it holds no threshold), atomically: no half-written file if interrupted."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(TILE_COLUMNS)
            writer.writerows([*win, f"{p:.9g}"] for win, p in zip(self.windows(), self.probabilities.tolist()))
        return path


def photo_size(path: Path) -> tuple[int, int]:
    """(height, width) of a photo as a viewer shows it, from its header alone; (0, 0) if unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(ORIENTATION) in (5, 6, 7, 8):  # turned a quarter: exif_transpose swaps
                width, height = height, width
    except Exception:
        return 0, 0
    return height, width


def tile_count(height: int, width: int, size: tuple[int, int], stride: tuple[int, int]) -> int:
    """Windows of a ``height`` x ``width`` photo in windows mode."""
    return len(starts(height, size[0], stride[0])) * len(starts(width, size[1], stride[1]))


def load_photo(path: Path) -> Image.Image:
    """RGB photo the way a viewer shows it (EXIF rotation applied), so the heatmap lines up."""
    with Image.open(path) as img:
        return to_rgb(ImageOps.exif_transpose(img))


def score_photo(
    photo: Image.Image,
    backend: Callable,
    transform,
    size: tuple[int, int],
    stride: tuple[int, int],
    batch_size: int,
    tiles_csv: Path | None = None,
    advance: Callable[[int], None] = lambda k: None,
) -> PhotoScores:
    """Score every window of ``photo``, each cropped and preprocessed as a patch (windows mode),
    and write the per-tile CSV if asked."""
    width, height = photo.size
    image = np.array(photo)  # uint8 (H, W, 3): the one full-size copy
    probabilities = []
    for wins, crops in batches(image, windows(height, width, size, stride), batch_size, transform):
        probabilities.append(np.asarray(backend(crops), np.float32).reshape(-1))
        advance(len(wins))
    scores = PhotoScores.of(height, width, size, starts(height, size[0], stride[0]),
                            starts(width, size[1], stride[1]), np.concatenate(probabilities))
    if tiles_csv:
        scores.write_csv(tiles_csv)
    return scores


def predict_photo(
    photo: Image.Image,
    backend: Callable,
    transform,
    threshold: float,
    size: tuple[int, int],
    stride: tuple[int, int],
    batch_size: int,
    tiles_csv: Path | None = None,
    heatmap_png: Path | None = None,
    heatmap: dict | None = None,
    advance: Callable[[int], None] = lambda k: None,
) -> tuple[PhotoResult, TileGrid]:
    """:func:`score_photo` at ``threshold``, and the overlay PNG if asked."""
    scores = score_photo(photo, backend, transform, size, stride, batch_size, tiles_csv, advance)
    result = scores.at(threshold)
    if heatmap_png:
        write_heatmap(photo, scores.grid, result, threshold, heatmap_png, **(heatmap or {}))
    return result, scores.grid


def _preview(photo: Image.Image, box: tuple[int, int]) -> Image.Image:
    """The photo fitted into ``box`` (width, height), the size it takes in the heatmap PNG: the
    blend and the outline are made at that size, not the photo's."""
    scale = min(box[0] / photo.width, box[1] / photo.height)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    return photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0) if size != photo.size else photo


def write_heatmap(photo: Image.Image, grid: TileGrid, result: PhotoResult, threshold: float, path: Path,
                  max_side: int = 1600, alpha: float = 0.45, cmap: str = "turbo") -> Path:
    """The photo with the averaged crack probability blended over it, the threshold as a
    white outline, a colour bar and the verdict in the title; ``max_side`` px on its long side
    (drawn by :func:`draw_heatmap`)."""
    preview = _preview(photo, photo_room(max_side))
    heat = np.nan_to_num(grid.resample(preview.height, preview.width))
    verdict = "CRACK" if result.verdict(threshold) else "no crack"
    title = (f"{verdict}: max {result.max_probability:.3f} (threshold {threshold:.3f}), "
             f"{result.crack_area_fraction:.1%} of the area, {result.crack_tiles}/{result.tiles} tiles")
    pixels = draw_heatmap(np.asarray(preview), heat, threshold, title, max_side, alpha, cmap)
    return save_pixels(pixels, path)  # atomic: no half-written PNG if interrupted
