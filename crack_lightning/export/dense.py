"""The dense graphs beside an export: photo tiles in, feature maps out; a stitched feature map
and window starts in, the windows' logits out.

:class:`~crack_lightning.inference.dense.DenseFeatures` and
:class:`~crack_lightning.inference.dense.DenseHead` exported as they are, so onnxruntime runs
what PyTorch runs in ``tile_mode=dense``:

- ``<stem>.dense.onnx``: input ``tiles`` (uint8 ``[B, H, W, 3]`` at the model's scale, every
  size dynamic) -> ``features`` ``[B, C, H / r, W / r]``;
- ``<stem>.dense-head.onnx``: inputs ``features`` (``[1, C, H, W]``), ``rows``, ``cols`` (int64
  window starts in feature cells, any count) -> ``logits`` ``[rows * cols, N]``.

Two graphs, not one: the tiles' features are stitched between them (onnxruntime wants every
input of a graph fed). They are checked against the torch modules on two tiles of the check
images stitched side by side.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crack_lightning.export.graph import ParityError, graph_program
from crack_lightning.inference.checkpoint import LoadedClassifier
from crack_lightning.inference.dense import DenseFeatures, DenseHead, DenseUnsupported, Geometry, geometry
from crack_lightning.inference.onnx_backend import DENSE_FEATURES, DENSE_HEAD_INPUTS, DENSE_INPUT, softmax
from crack_lightning.data.augmentation import to_resized_image

log = logging.getLogger(__name__)


def _modules(loaded: LoadedClassifier) -> tuple[DenseFeatures, DenseHead]:
    pre, model = loaded.card.preprocessing, loaded.model.eval()
    return DenseFeatures(model, pre.mean, pre.std).eval(), DenseHead(model, geometry(model, pre.input_size)).eval()


def dense_programs(loaded: LoadedClassifier, opset: int):
    """(The features and head graphs' ONNX programs, their :class:`Geometry`), or (None, None)
    when the backbone has no feature map to pool windows from (the export then has no dense graphs)."""
    try:
        features, head = _modules(loaded)
    except DenseUnsupported as err:
        log.info("No dense graph for whole photos: %s", err)
        return None, None
    geo: Geometry = head.geometry
    (wh, ww), r = geo.window, geo.reduction
    # two tiles of sizes unlike any constant torch.export might fold
    tiles = torch.zeros(2, (wh + 1) * r, (ww + 2) * r, 3, dtype=torch.uint8)
    dims = {"tiles": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("height", min=r),
                      2: torch.export.Dim("width", min=r)}}
    first = graph_program(features, (tiles,), [DENSE_INPUT], [DENSE_FEATURES], dims, opset)
    with torch.no_grad():
        fmap = features(tiles[:1])
    example = (fmap, torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    dims = {DENSE_FEATURES: {2: torch.export.Dim("height", min=wh), 3: torch.export.Dim("width", min=ww)},
            "rows": {0: torch.export.Dim("rows", min=1)}, "cols": {0: torch.export.Dim("cols", min=1)}}
    second = graph_program(head, example, list(DENSE_HEAD_INPUTS), ["logits"], dims, opset)
    return (first, second), geo


def check_dense(loaded: LoadedClassifier, paths: tuple[Path, Path], images: list[Image.Image], atol: float) -> float:
    """Max |Δp| (every class, the card's temperature) of the dense graphs at ``paths`` vs the torch
    modules, on two tiles of the check images stitched side by side; ParityError above ``atol``."""
    import onnxruntime as ort

    features, head = _modules(loaded)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    (wh, ww), r = head.geometry.window, head.geometry.reduction
    diff = 0.0
    for left, right in _tiles(loaded, images):
        with torch.no_grad():
            fmap = torch.cat([features(torch.from_numpy(t)) for t in (left, right)], dim=-1)
        got_fmap = np.concatenate([sessions[0].run([DENSE_FEATURES], {DENSE_INPUT: t})[0] for t in (left, right)], -1)
        rows = np.arange(0, fmap.shape[-2] - wh + 1)
        cols = np.arange(0, fmap.shape[-1] - ww + 1)[::-1].copy()  # any order, as a plan gives
        with torch.no_grad():
            expected = head(fmap, torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
        (got,) = sessions[1].run(["logits"], {DENSE_FEATURES: got_fmap, "rows": rows, "cols": cols})
        t = loaded.card.temperature
        diff = max(diff, float(np.abs(softmax(got, t) - softmax(expected, t)).max()))
    if not diff <= atol:
        raise ParityError(f"the dense graphs and PyTorch's DenseFeatures/DenseHead disagree: max |Δp| = {diff:.3g} > "
                          f"atol={atol:g}. Try another opset=, or check=false to keep the files unchecked.")
    return diff


def _tiles(loaded: LoadedClassifier, images: list[Image.Image]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of tiles to stitch side by side, uint8 ``[1, H, W, 3]``: 2 x 1 check images each
    (the model's input size), and 1 x 1 beside 1 x 2."""
    resize = to_resized_image(loaded.card.preprocessing.to_timm_data_config())
    tiles = [resize(image).permute(1, 2, 0).numpy() for image in images[:4]]
    tiles = (tiles * 4)[:4]
    tall = [np.concatenate(tiles[:2], axis=0), np.concatenate(tiles[2:], axis=0)]
    uneven = [tiles[0], np.concatenate(tiles[1:3], axis=1)]
    return [tuple(np.ascontiguousarray(t[None]) for t in pair) for pair in (tall, uneven)]
