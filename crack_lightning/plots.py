"""Figures for people: image grids with labels and confusion matrices.

Built on ``matplotlib.figure.Figure`` (no pyplot state, no display needed), so the
same figure can be saved as PNG and logged to TensorBoard.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


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


def confusion_matrix_figure(targets: Sequence[int], preds: Sequence[int], class_names: Sequence[str]) -> Figure:
    """Counts with row-normalised rates, true class on the rows."""
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        targets, preds, labels=list(range(len(class_names))), display_labels=class_names, ax=ax, colorbar=False, cmap="Blues"
    )
    ax.set_title("Confusion matrix (test)")
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
