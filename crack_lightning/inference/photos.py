"""Whole photos with a backend: the one scorer behind ``predict.py tile=true``, the app and
``POST /predict?tile=true``.

``tile_mode=windows`` crops every window and scores it as a patch
(:mod:`~crack_lightning.inference.tiling`); ``tile_mode=dense`` runs the backbone once over the
photo and pools each window from its feature map (:mod:`~crack_lightning.inference.dense`),
3-3.7x faster on a 4032x3024 photo at 224 px (BENCHMARKS.md) but not the same numbers: a
window's cells also see its neighbours. ``tile_mode=auto`` (the default) is dense where a window
spans at least :data:`DENSE_MIN_CELLS` cells a side -- there it found the same cracks as
cropped windows with 0.1 % false alarms -- and windows below, where the neighbours' share of
each cell outweighs the window's own (3x3 cells at 96 px: 6 % false alarms). A backbone without
a convolutional feature map (a vision transformer) is scored window by window. Every mode gives
the same outputs: per-window CSV, heatmap, verdict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from crack_lightning.data.augmentation import eval_transform
from crack_lightning.inference import dense, tiling
from crack_lightning.inference.backends import Backend

log = logging.getLogger(__name__)

# Cells a side a window must span for tile_mode=auto to pool it from the photo's feature map:
# the 224 px input of a 32 px-cell backbone (7x7) agreed with cropped windows, 96 px (3x3) did not.
DENSE_MIN_CELLS = 7


def _pair(value, default: tuple[int, int]) -> tuple[int, int]:
    """``null`` -> ``default``, ``227`` -> (227, 227), ``[h, w]`` -> (h, w) (checked by the settings)."""
    if value is None:
        return tuple(int(v) for v in default)
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def tile_windows(native_size, tile_size=None, tile_stride=None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, stride) in px of whole-photo mode: null window = the model's training patch
    (``native_size``), null stride = half the window (predict.py's, the app's and serve.py's)."""
    size = _pair(tile_size, native_size)
    return size, _pair(tile_stride, tuple(max(1, s // 2) for s in size))


class MostCrackLike:
    """``backend`` as windows mode calls it (crack probabilities), keeping the probability of every
    class of the most crack-like window so far: a photo's ``label`` and ``prob_<class>``."""

    def __init__(self, backend: Backend):
        self.backend, self.best, self.classes = backend, -np.inf, None

    def __call__(self, crops) -> np.ndarray:
        crack, every = self.backend.scores(crops)
        if len(crack) and crack.max() > self.best:
            self.best, self.classes = float(crack.max()), every[int(crack.argmax())]
        return crack


class PhotoScorer:
    """Every window of a photo scored by ``backend``: ``size`` px windows every ``stride`` px (dense
    mode rounds the stride to whole feature cells, :meth:`used_stride`: 97 px for a 227 px window at 224 px),
    ``batch_size`` windows a forward pass (windows mode), tiles of at most ``block_megapixels``
    model pixels (dense mode)."""

    def __init__(self, backend: Backend, tile_size=None, tile_stride=None, mode: str = "auto",
                 batch_size: int = 16, block_megapixels: float = 0.8):
        pre = backend.card.preprocessing
        self.backend, self.batch_size, self.block_megapixels = backend, int(batch_size), float(block_megapixels)
        self.size, self.stride = tile_windows(pre.native_size, tile_size, tile_stride)
        self.input_size, self.interpolation = tuple(pre.input_size), pre.interpolation
        self.transform = eval_transform(pre.to_timm_data_config())
        self.geometry = self._geometry(mode) if mode in ("auto", "dense") else None
        self.mode = "dense" if self.geometry else "windows"

    def _geometry(self, mode: str) -> dense.Geometry | None:
        """The backend's dense geometry if ``mode`` takes it; auto says why not at INFO, dense warns."""
        say = log.warning if mode == "dense" else log.info
        try:
            if not hasattr(self.backend, "dense_geometry"):
                raise dense.DenseUnsupported(f"{type(self.backend).__name__} scores patches only.")
            geometry = self.backend.dense_geometry()
        except dense.DenseUnsupported as err:
            say("tile_mode=%s: %s Scoring whole photos window by window.", mode, err)
            return None
        cells = min(geometry.window)
        if cells < DENSE_MIN_CELLS:
            reason = (f"a window is {geometry.window[0]}x{geometry.window[1]} feature cells at this model's "
                      f"{self.input_size[0]}x{self.input_size[1]} px input, and its neighbours' context moves the "
                      f"probabilities of windows under {DENSE_MIN_CELLS}x{DENSE_MIN_CELLS}")
            if mode == "auto":
                log.info("tile_mode=auto: windows mode (%s).", reason)
                return None
            log.warning("tile_mode=dense: %s; check it on labelled photos, or use tile_mode=windows.", reason)
        return geometry

    def used_stride(self) -> tuple[int, int]:
        """The stride in px the windows of a large photo get: dense mode's whole feature cells nearest the one asked."""
        if self.geometry is None:
            return self.stride
        r = self.geometry.reduction
        cells = dense.cell_steps(self.stride, self.size, self.input_size, r)
        return tuple(round(k * r * s / i) for k, s, i in zip(cells, self.size, self.input_size))

    def describe(self) -> str:
        stride = self.used_stride()
        return f"{self.mode}: tiles of {self.size[0]}x{self.size[1]} px every {stride[0]}x{stride[1]} px" + (
            " (whole feature cells)" if self.mode == "dense" else "")

    def _plan(self, height: int, width: int) -> dense.Plan | None:
        if self.geometry is None:
            return None
        return dense.plan(height, width, self.size, self.stride, self.input_size, self.geometry,
                          self.block_megapixels)

    def count(self, path: Path) -> int:
        """Windows of a photo from its header alone (0 if unreadable): the progress bar's total."""
        return self.count_size(*tiling.photo_size(path))

    def count_size(self, height: int, width: int) -> int:
        """Windows of a ``height`` x ``width`` photo."""
        if not height:
            return 0
        the_plan = self._plan(height, width)
        if the_plan is None:
            return tiling.tile_count(height, width, self.size, self.stride)
        return len(the_plan.tops) * len(the_plan.lefts)

    def __call__(self, photo: Image.Image, tiles_csv: Path | None = None,
                 advance: Callable[[int], None] = lambda k: None) -> tiling.PhotoScores:
        """The photo's :class:`~crack_lightning.inference.tiling.PhotoScores`, with the class
        probabilities of its most crack-like window; the per-tile CSV if asked."""
        width, height = photo.size
        the_plan = self._plan(height, width)
        if the_plan is None:  # windows mode, or a photo smaller than a window on a side
            scored = MostCrackLike(self.backend)
            scores = tiling.score_photo(photo, scored, self.transform, self.size, self.stride, self.batch_size,
                                        tiles_csv, advance)
            scores.classes = scored.classes
            return scores
        scaled = dense.scaled_photo(photo, the_plan.scaled, self.interpolation)
        crack, every = dense.dense_probabilities(scaled, the_plan, self.backend.dense_features,
                                                 self.backend.dense_scores, advance)
        best = np.unravel_index(int(np.argmax(crack)), crack.shape)
        scores = tiling.PhotoScores.of(height, width, the_plan.size, the_plan.tops, the_plan.lefts, crack, every[best])
        if tiles_csv:
            scores.write_csv(tiles_csv)
        return scores
