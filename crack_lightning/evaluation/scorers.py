"""A trained model as a LightningModule to test, whichever file it is: a checkpoint is its
:class:`~crack_lightning.models.CrackClassifier`; an exported ``.onnx`` file is an
:class:`OnnxScorer`, whose logits come from onnxruntime. Both are
:class:`~crack_lightning.models.scoring.CrackScorer`\\ s, so ``evaluate.py`` and
``recalibrate.py`` test them with the very metrics, callbacks and reports of training."""

from __future__ import annotations

from pathlib import Path

import torch

from crack_lightning.inference.checkpoint import load_classifier
from crack_lightning.inference.onnx_backend import OnnxBackend
from crack_lightning.models.scoring import CrackScorer
from crack_lightning.utils.files import sha256_file


class OnnxScorer(CrackScorer):
    """An export.py ``.onnx`` file scored by onnxruntime on the CPU (its card from the file's metadata)."""

    onnxruntime = True

    def __init__(self, backend: OnnxBackend):
        card = backend.card
        super().__init__(len(card.class_names), card.class_names, card.positive_labels)
        self.save_hyperparameters({"num_classes": len(card.class_names), "class_names": list(card.class_names),
                                   "positive_classes": card.positive_labels})
        self.backend = backend
        self.card = card
        self.set_operating_point({"threshold": card.threshold, "temperature": card.temperature})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.backend.logits(images)).to(images.device)


def open_scorer(path: str | Path, operating_point: str | None = None) -> tuple[CrackScorer, str]:
    """The model in ``path`` (``.onnx``: onnxruntime; else a checkpoint) in eval mode, at its named
    ``operating_point`` when given, and the file's SHA-256."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".onnx":
        backend = OnnxBackend(path, operating_point=operating_point)
        return OnnxScorer(backend).eval(), sha256_file(path)
    loaded = load_classifier(path, operating_point=operating_point)
    return loaded.model, loaded.sha256
