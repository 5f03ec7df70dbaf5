"""Figures for people: image grids with labels and confusion matrices.

Built on ``matplotlib.figure.Figure`` (no pyplot state, no display needed), so the
same figure can be saved as PNG and logged to TensorBoard.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay, confusion_matrix, precision_score, recall_score,
)

from crack_lightning.utils.files import atomic_path


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: float images in [0, 1], shape (N, 3, H, W)."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def image_grid_figure(
    images: torch.Tensor,
    titles: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    ncols: int = 4,
    suptitle: str | None = None,
) -> Figure:
    """A grid of images in [0, 1] with an optional coloured title under each."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(2.4 * ncols, 2.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].permute(1, 2, 0).float().cpu().numpy())
        if titles:
            ax.set_title(titles[i], fontsize=8, color=colors[i] if colors else "black")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def confusion_matrix_figure(targets: Sequence[int], preds: Sequence[int], class_names: Sequence[str],
                            title: str = "Confusion matrix (test)") -> Figure:
    """Counts, true class on the rows; grows with the number of classes beyond two."""
    extra = 0.9 * max(0, len(class_names) - 2)
    fig = Figure(figsize=(4.5 + extra, 4 + extra), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        targets, preds, labels=list(range(len(class_names))), display_labels=class_names, ax=ax, colorbar=False,
        cmap="Blues", xticks_rotation="horizontal" if len(class_names) <= 2 else 45,
    )
    ax.set_title(title)
    return fig


def confusion_table(targets: Sequence[int], preds: Sequence[int], class_names: Sequence[str]) -> list[list[str]]:
    """The confusion matrix as rows of cells: a header of predicted classes, then one row per
    true class (what ``confusion_matrix.csv`` and the text report show)."""
    matrix = confusion_matrix(targets, preds, labels=list(range(len(class_names))))
    return [["true \\ predicted", *class_names]] + [[name, *map(str, row)] for name, row in zip(class_names, matrix)]


def curves_figure(targets: np.ndarray, probs: np.ndarray, thresholds: dict[str, float], split: str = "test") -> Figure:
    """Precision-recall and ROC curves side by side, each threshold in ``thresholds``
    (label -> value) marked where it operates ("crack" = probability > threshold)."""
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax_pr, ax_roc = fig.subplots(1, 2)
    PrecisionRecallDisplay.from_predictions(targets, probs, ax=ax_pr, name="model", plot_chance_level=True)
    RocCurveDisplay.from_predictions(targets, probs, ax=ax_roc, name="model", plot_chance_level=True)
    negatives = max(1, int((targets == 0).sum()))
    for (label, threshold), marker in zip(thresholds.items(), "os^D"):
        preds = probs > threshold
        precision = precision_score(targets, preds, zero_division=0)
        recall = recall_score(targets, preds, zero_division=0)
        false_alarms = float((preds & (targets == 0)).sum()) / negatives
        ax_pr.plot(recall, precision, marker, ms=8, label=f"{label} ({threshold:.3g})")
        ax_roc.plot(false_alarms, recall, marker, ms=8, label=f"{label} ({threshold:.3g})")
    for ax in (ax_pr, ax_roc):
        ax.legend(fontsize=8, loc="lower left" if ax is ax_pr else "lower right")
    ax_pr.set_title(f"Precision-recall ({split})")
    ax_roc.set_title(f"ROC ({split})")
    return fig


def reliability_figure(targets: np.ndarray, curves: dict[str, np.ndarray], n_bins: int = 15, split: str = "test") -> Figure:
    """Reliability diagram: observed crack frequency against predicted probability for
    each named set of probabilities (e.g. before / after temperature scaling)."""
    fig = Figure(figsize=(4.8, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, probs in curves.items():
        CalibrationDisplay.from_predictions(targets, probs, n_bins=n_bins, ax=ax, name=name)
    ax.set_title(f"Reliability ({split})")
    ax.legend(fontsize=8, loc="upper left")
    return fig


@lru_cache(maxsize=None)
def colour_table(cmap: str) -> np.ndarray:
    """``cmap`` sampled once at 256 levels, matplotlib's own resolution: float32 (256, 3) in [0, 1]."""
    from matplotlib import colormaps

    table = colormaps[cmap](np.linspace(0, 1, 256))[:, :3].astype(np.float32)
    table.setflags(write=False)  # shared by every caller through the cache
    return table


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heat map (H, W) over an RGB image (H, W, 3): floats in [0, 1] give float32
    (Grad-CAM), uint8 gives uint8 (the whole-photo heatmap, straight into its PNG).

    Each value takes the :func:`colour_table` row matplotlib would, ``floor(x * 256)``, 1 the last.
    """
    scale = 255 if image.dtype == np.uint8 else 1
    blend = (alpha * scale * colour_table(cmap))[np.minimum(np.clip(heat, 0, 1) * 256, 255).astype(np.uint8)]
    blend += np.float32(1 - alpha) * image
    return (blend + 0.5).astype(np.uint8) if scale == 255 else blend


DPI = 110


def render_figure(fig: Figure, dpi: int = DPI) -> np.ndarray:
    """Draw ``fig`` once with Agg: its pixels, (H, W, 3) uint8 -- what both the PNG file and
    TensorBoard get, so a figure is laid out and rasterised once, not once per destination
    (constrained layout is most of a figure's cost: ~0.2 s each on a 2-core CPU)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_pixels(pixels: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:  # zlib level 3: a third of the default's time for 10 % more bytes
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=3)
    return path


def save_figure(fig: Figure, path: Path) -> Path:
    return save_pixels(render_figure(fig), path)
