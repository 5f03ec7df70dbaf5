"""One interface over the ways to run a trained model: a checkpoint in PyTorch, or an
exported ONNX file in onnxruntime.

A backend takes a batch of *preprocessed* images -- float32 (N, 3, H, W), resized and
normalised by :func:`crack_lightning.data.augmentation.eval_transform` with the
backend's card (``card.preprocessing.to_timm_data_config()``) -- and returns calibrated
crack probabilities, P(any crack class), float32 (N,); :meth:`Backend.scores` gives the
probability of every class beside them, from the same forward pass. It also carries what
a prediction report needs: its :class:`~crack_lightning.model_card.ModelCard` (class
names, crack classes, operating threshold, temperature, preprocessing) and a short hash
of the model file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from crack_lightning.inference.checkpoint import LoadedClassifier, load_classifier
from crack_lightning.inference.dense import DenseFeatures, DenseHead, Geometry, geometry
from crack_lightning.model_card import ModelCard


class Backend(Protocol):
    path: Path
    model_hash: str  # first 12 hex digits of the model file's SHA-256
    card: ModelCard

    def scores(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(crack probability (N,), probability of every class (N, C) in ``card.class_names``
        order), calibrated, float32."""

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The crack probabilities alone: ``scores(images)[0]``."""


class TorchBackend:
    """A checkpoint run by PyTorch on ``device`` (fp32, channels-last, no autograd)."""

    def __init__(self, loaded: LoadedClassifier, device: str | torch.device = "cpu"):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.path = loaded.path
        self.model_hash = loaded.sha256[:12]
        self.card = loaded.card
        self._dense: tuple[DenseFeatures, DenseHead] | None = None  # built at the first whole photo of tile_mode=dense

    @torch.inference_mode()
    def scores(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        images = torch.as_tensor(images, dtype=torch.float32).to(self.device, non_blocking=True)
        logits = self.model(images)
        return tuple(p.cpu().numpy().astype(np.float32) for p in (
            self.model.crack_probability(logits), self.model.probabilities(logits)))

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.scores(images)[0]

    def dense_geometry(self) -> Geometry:
        """How windows map onto the backbone's feature map (:class:`DenseUnsupported` if they cannot)."""
        if self._dense is None:
            pre = self.card.preprocessing
            geo = geometry(self.model, pre.input_size)
            self._dense = (DenseFeatures(self.model, pre.mean, pre.std).to(self.device).eval(),
                           DenseHead(self.model, geo).eval())
        return self._dense[1].geometry

    @torch.inference_mode()
    def dense_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """The backbone's feature maps of uint8 ``[B, H, W, 3]`` tiles at the model's scale (on the device)."""
        self.dense_geometry()
        return self._dense[0](torch.as_tensor(tiles).to(self.device))

    @torch.inference_mode()
    def dense_scores(self, features: torch.Tensor, rows: list[int], cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(crack probability, every class's) of the windows starting at feature cells ``rows`` x
        ``cols`` of a stitched ``[1, C, H, W]`` feature map, row by row."""
        self.dense_geometry()
        index = [torch.as_tensor(v, dtype=torch.int64, device=self.device) for v in (rows, cols)]
        logits = self._dense[1](features, *index)
        return tuple(p.cpu().numpy().astype(np.float32) for p in (
            self.model.crack_probability(logits), self.model.probabilities(logits)))


def open_backend(path: str | Path, device: str | torch.device = "cpu", operating_point: str | None = None) -> Backend:
    """A backend for ``path``: ``.onnx`` runs in onnxruntime, anything else is a checkpoint; at
    the model's named ``operating_point`` when given (recalibrate.py's)."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".onnx":
        from crack_lightning.inference.onnx_backend import OnnxBackend

        return OnnxBackend(path, operating_point=operating_point)
    return TorchBackend(load_classifier(path, operating_point=operating_point), device=device)
