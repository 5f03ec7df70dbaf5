"""Run an exported ``.onnx`` file in onnxruntime: the file's contract and the backend that keeps it.

The graph has one input, ``images`` (float32 ``[batch, 3, H, W]``, batch dynamic), and
two outputs, ``crack_probability`` (``[batch]``, P(any crack class), temperature applied)
and ``logits`` (``[batch, N]``, in ``class_names`` order); :mod:`crack_lightning.export.onnx`
writes it. The probability of every class is the backend's :func:`softmax` of the logits at
the card's temperature, not a third output: files of every version have the same two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from crack_lightning import CrackLightningError
from crack_lightning.model_card import ModelCard
from crack_lightning.utils.files import sha256_file

INPUT = "images"
OUTPUTS = ("crack_probability", "logits")
CONTRACT = (
    "input 'images': float32 [batch, 3, H, W], an RGB image resized to preprocessing.input_size "
    "[H, W] with preprocessing.interpolation (antialiased), scaled to [0, 1] and normalised with "
    "preprocessing.mean/std. Outputs: 'crack_probability' float32 [batch] = the sum over "
    "positive_classes of softmax(logits / temperature), crack if > threshold; 'logits' float32 "
    "[batch, N] in class_names order (N = len(class_names))."
)


class OnnxBackend:
    """An exported ``.onnx`` file run by onnxruntime on the CPU (see :class:`~crack_lightning.
    inference.backends.Backend`); the card comes from the file's metadata."""

    def __init__(self, path: str | Path, threads: int | None = None, operating_point: str | None = None):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CrackLightningError(
                f"{self.path}: no such file. Export one with python export.py ckpt=<run>/checkpoints/best.ckpt."
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # not ONNX, truncated, an opset this onnxruntime lacks
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CrackLightningError(
                f"{self.path}: onnxruntime {ort.__version__} cannot load it ({type(err).__name__}: {reason})."
            ) from err
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        # the card's keys: an .onnx file without them was not written by export_onnx
        missing = [key for key in ModelCard.ONNX_KEYS if key not in meta]
        inputs = [i.name for i in self.session.get_inputs()]
        if missing or inputs != [INPUT] or OUTPUTS[0] not in [o.name for o in self.session.get_outputs()]:
            raise CrackLightningError(
                f"{self.path}: not an ONNX model written by export.py (metadata lacks {missing or 'nothing'}, "
                f"inputs {inputs}); export the checkpoint with python export.py ckpt=... format=onnx."
            )
        self.metadata = meta
        self.card = ModelCard.from_onnx_metadata(meta, where=str(self.path))
        self.baked_temperature = self.card.temperature  # the graph's crack_probability applies this one
        if operating_point:
            self.card = self.card.with_operating_point(self.card.point(operating_point))
        self.checkpoint_sha256 = meta.get("checkpoint_sha256", "")
        self.model_hash = sha256_file(self.path)[:12]

    def scores(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(to_numpy(images), dtype=np.float32)
        crack, logits = self.session.run(list(OUTPUTS), {INPUT: images})
        probs = softmax(logits, self.card.temperature)
        if self.card.temperature != self.baked_temperature:  # a named point's: sum its classes here
            crack = np.clip(probs[:, self.card.positive_labels].sum(axis=1), 0.0, 1.0)
        return crack.astype(np.float32, copy=False), probs

    def logits(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The class logits, before temperature scaling (float32 (N, C))."""
        images = np.ascontiguousarray(to_numpy(images), dtype=np.float32)
        return self.session.run([OUTPUTS[1]], {INPUT: images})[0].astype(np.float32, copy=False)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.scores(images)[0]


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` per row in float32, as ``CrackClassifier.probabilities``."""
    z = np.asarray(logits, np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def to_numpy(images) -> np.ndarray:
    """A batch as a NumPy array (a tensor is moved to the CPU first)."""
    return images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
