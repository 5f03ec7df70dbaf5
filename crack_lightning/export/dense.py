"""The dense graph beside an export: a photo block in, the logits of its windows out.

:class:`~crack_lightning.inference.dense.DenseWindows` exported as it is, so onnxruntime
runs what PyTorch runs in ``tile_mode=dense``: inputs ``block`` (uint8 ``[1, H, W, 3]`` at
the model's scale, H and W dynamic) and ``rows``, ``cols`` (int64 window starts in feature
cells, any count); output ``logits`` ``[rows * cols, N]``. It is checked against the torch
module on a block tiled from the check images, at two block sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crack_lightning.export.graph import ParityError, graph_program
from crack_lightning.inference.checkpoint import LoadedClassifier
from crack_lightning.inference.dense import DenseUnsupported, DenseWindows, Geometry, geometry
from crack_lightning.inference.onnx_backend import DENSE_INPUTS, softmax
from crack_lightning.data.augmentation import to_resized_image

log = logging.getLogger(__name__)


def _module(loaded: LoadedClassifier) -> DenseWindows:
    pre = loaded.card.preprocessing
    return DenseWindows(loaded.model.eval(), geometry(loaded.model, pre.input_size), pre.mean, pre.std).eval()


def dense_program(loaded: LoadedClassifier, opset: int):
    """(The dense graph's ONNX program, its :class:`Geometry`), or (None, None) when the
    backbone has no feature map to pool windows from (the export then has no dense graph)."""
    try:
        module = _module(loaded)
    except DenseUnsupported as err:
        log.info("No dense graph for whole photos: %s", err)
        return None, None
    geo: Geometry = module.geometry
    (wh, ww), r = geo.window, geo.reduction
    # two windows by three, plus a stray pixel row: sizes unlike any constant torch.export might fold
    block = torch.zeros(1, (wh + 1) * r + 1, (ww + 2) * r, 3, dtype=torch.uint8)
    example = (block, torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    dims = {"block": {1: torch.export.Dim("height", min=wh * r), 2: torch.export.Dim("width", min=ww * r)},
            "rows": {0: torch.export.Dim("rows", min=1)}, "cols": {0: torch.export.Dim("cols", min=1)}}
    return graph_program(module, example, list(DENSE_INPUTS), ["logits"], dims, opset), geo


def check_dense(loaded: LoadedClassifier, path: Path, images: list[Image.Image], atol: float) -> float:
    """Max |Δp| (every class, the card's temperature) of the dense graph at ``path`` vs
    DenseWindows in PyTorch, on blocks tiled from ``images``; ParityError above ``atol``."""
    import onnxruntime as ort

    module = _module(loaded)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (wh, ww), r = module.geometry.window, module.geometry.reduction
    diff = 0.0
    for block in _blocks(loaded, images):
        rows = np.arange(0, block.shape[1] // r - wh + 1)
        cols = np.arange(0, block.shape[2] // r - ww + 1)[::-1].copy()  # any order, as a block's plan gives
        with torch.no_grad():
            expected = module(torch.from_numpy(block), torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
        (got,) = session.run(["logits"], {"block": block, "rows": rows, "cols": cols})
        t = loaded.card.temperature
        diff = max(diff, float(np.abs(softmax(got, t) - softmax(expected, t)).max()))
    if not diff <= atol:
        raise ParityError(f"the dense graph and PyTorch's DenseWindows disagree: max |Δp| = {diff:.3g} > "
                          f"atol={atol:g}. Try another opset=, or check=false to keep the files unchecked.")
    return diff


def _blocks(loaded: LoadedClassifier, images: list[Image.Image]) -> list[np.ndarray]:
    """Two blocks of the check images at the model's input size side by side: 2 x 2 and 1 x 3
    (a few hundred pixels at 224 px), uint8 ``[1, H, W, 3]``."""
    resize = to_resized_image(loaded.card.preprocessing.to_timm_data_config())
    tiles = [resize(image).permute(1, 2, 0).numpy() for image in images[:4]]
    tiles = (tiles * 4)[:4]
    square = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    wide = np.concatenate(tiles[:3], axis=1)
    return [np.ascontiguousarray(b[None]) for b in (square, wide)]
