"""Run an exported ``.onnx`` file in onnxruntime: the file's contract and the backend that keeps it.

Contract 2 (export.py since issue 19): one input, ``pixels`` -- uint8 RGB ``[batch, H, W, 3]``
of any size; the graph resizes to ``preprocessing.input_size`` and normalises, so numpy and
onnxruntime alone run it. Contract 1 (older files): ``images``, float32 ``[batch, 3, H, W]``
already resized and normalised. Both have two outputs, ``crack_probability`` (``[batch]``,
P(any crack class), temperature applied) and ``logits`` (``[batch, N]``, ``class_names``
order). The probability of every class is the backend's :func:`softmax` of the logits at the
card's temperature, not a third output: files of every version have the same two.

A contract-2 file may have two dense siblings for whole photos, named with their SHA-256 and the
window geometry in the main file's metadata: ``<stem>.dense.onnx``, uint8 ``tiles`` ``[B, H, W,
3]`` at the model's scale -> ``features``, and ``<stem>.dense-head.onnx``, a stitched feature map
and window starts ``rows``, ``cols`` (int64 feature cells) -> ``logits`` ``[rows * cols, N]``
(:class:`~crack_lightning.inference.dense.DenseFeatures`, ``DenseHead``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from crack_lightning import CrackLightningError
from crack_lightning.inference.model_files import DENSE_ROLES
from crack_lightning.model_card import ModelCard
from crack_lightning.utils.files import sha256_file

INPUT = "pixels"
LEGACY_INPUT = "images"  # contract 1
OUTPUTS = ("crack_probability", "logits")
CONTRACT_VERSION = "2"
CONTRACT = (
    "contract 2. input 'pixels': uint8 [batch, H, W, 3], RGB, any H and W; the graph resizes it to "
    "preprocessing.input_size with preprocessing.interpolation (antialiased, width then height, rounded "
    "to whole levels after each pass as torchvision does), scales to [0, 1] and normalises with "
    "preprocessing.mean/std. Outputs: 'crack_probability' float32 [batch] = the sum over positive_classes "
    "of softmax(logits / temperature), crack if > threshold; 'logits' float32 [batch, N] in class_names "
    "order (N = len(class_names)). Optional dense graphs (metadata dense_graph, dense_sha256, "
    "dense_head_graph, dense_head_sha256): 'tiles' uint8 [B, H, W, 3] at the model's scale -> 'features' "
    "float32 [B, C, H / dense_reduction, W / dense_reduction]; then 'features' [1, C, h, w] (tiles' maps "
    "stitched), 'rows' and 'cols' int64 window starts in feature cells (dense_window_cells, dense_pool) -> "
    "'logits' float32 [rows * cols, N]."
)
DENSE_INPUT = "tiles"
DENSE_FEATURES = "features"  # the features graph's output, the head graph's first input
DENSE_HEAD_INPUTS = (DENSE_FEATURES, "rows", "cols")


class OnnxBackend:
    """An exported ``.onnx`` file run by onnxruntime on the CPU (see :class:`~crack_lightning.
    inference.backends.Backend`); the card comes from the file's metadata.

    It takes what the pipelines hand every backend -- float32 ``(N, 3, h, w)`` from
    :func:`~crack_lightning.data.augmentation.eval_transform` -- and for a contract-2 file also
    uint8 pixels, ``(N, H, W, 3)`` of any size or ``(N, 3, H, W)``.
    """

    def __init__(self, path: str | Path, threads: int | None = None, operating_point: str | None = None):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CrackLightningError(
                f"{self.path}: no such file. Export one with python export.py ckpt=<run>/checkpoints/best.ckpt."
            )
        self.threads = threads
        self.session = _session(self.path, threads)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        # the card's keys: an .onnx file without them was not written by export_onnx
        missing = [key for key in ModelCard.ONNX_KEYS if key not in meta]
        inputs = [i.name for i in self.session.get_inputs()]
        if "dense_graph_of" in meta:
            raise CrackLightningError(f"{self.path} is the dense graph of {meta['dense_graph_of']} beside it, which "
                                      f"uses it for whole photos: give ckpt={self.path.with_name(meta['dense_graph_of'])}.")
        if missing or inputs not in ([INPUT], [LEGACY_INPUT]) or OUTPUTS[0] not in [
                o.name for o in self.session.get_outputs()]:
            raise CrackLightningError(
                f"{self.path}: not an ONNX model written by export.py (metadata lacks {missing or 'nothing'}, "
                f"inputs {inputs}); export the checkpoint with python export.py ckpt=... format=onnx."
            )
        self.legacy = inputs == [LEGACY_INPUT]  # contract 1: float32 NCHW, preprocessed outside
        self.input_name = inputs[0]
        self.metadata = meta
        self.card = ModelCard.from_onnx_metadata(meta, where=str(self.path))
        self.baked_temperature = self.card.temperature  # the graph's crack_probability applies this one
        if operating_point:
            self.card = self.card.with_operating_point(self.card.point(operating_point))
        pre = self.card.preprocessing
        self._mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
        self.checkpoint_sha256 = meta.get("checkpoint_sha256", "")
        self.model_hash = sha256_file(self.path)[:12]
        self._dense = None  # the dense sibling's session, opened at the first whole photo

    def pixels(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """What the graph's input takes. For a contract-2 file, float32 eval_transform output is
        turned back into its uint8 pixels: its resize rounds to uint8 before normalising, so
        ``round((x * std + mean) * 255)`` recovers them exactly (tested in tests/test_export.py)."""
        x = to_numpy(images)
        if self.legacy:
            if x.dtype == np.uint8:
                raise CrackLightningError(f"{self.path}: an export of contract 1 takes preprocessed float32 "
                                          f"images only; export the checkpoint again for uint8 input.")
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
            raise CrackLightningError(f"{self.path}: images of shape {x.shape}; give (N, H, W, 3) uint8 pixels "
                                      f"or eval_transform's float32 (N, 3, H, W).")
        if x.dtype != np.uint8:
            x = np.clip(np.rint((x.astype(np.float32) * self._std + self._mean) * 255), 0, 255).astype(np.uint8)
            x = x.transpose(0, 2, 3, 1)
        elif x.shape[-1] != 3:  # uint8 NCHW
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x)

    def _run(self, images) -> tuple[np.ndarray, np.ndarray]:
        return self.session.run(list(OUTPUTS), {self.input_name: self.pixels(images)})

    def scores(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        crack, logits = self._run(images)
        return self._calibrated(crack, logits)

    def _calibrated(self, crack: np.ndarray | None, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = softmax(logits, self.card.temperature)
        if crack is None or self.card.temperature != self.baked_temperature:  # a named point's: sum its classes
            crack = np.clip(probs[:, self.card.positive_labels].sum(axis=1), 0.0, 1.0)
        return crack.astype(np.float32, copy=False), probs

    def logits(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The class logits, before temperature scaling (float32 (N, C))."""
        return self._run(images)[1].astype(np.float32, copy=False)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.scores(images)[0]

    def dense_geometry(self):
        """The dense sibling's window :class:`~crack_lightning.inference.dense.Geometry`
        (``DenseUnsupported`` when the file has none, or it is missing or changed)."""
        from crack_lightning.inference.dense import Geometry  # timm, torchvision: only whole photos need them

        if self._dense is None:
            self._dense = self._open_dense()
        return Geometry.from_metadata(self.metadata)

    def _open_dense(self) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        from crack_lightning.inference.dense import DenseUnsupported

        if any(f"{role}_{key}" not in self.metadata for role in DENSE_ROLES for key in ("graph", "sha256")):
            raise DenseUnsupported(f"{self.path.name} has no dense graph (an older export, or a backbone without "
                                   f"one); export again with python export.py, or use tile_mode=windows.")
        sessions = []
        for role in DENSE_ROLES:
            path = self.path.with_name(self.metadata[f"{role}_graph"])
            if not path.is_file():
                raise DenseUnsupported(f"{path.name}, one of {self.path.name}'s dense graphs, is not beside it; copy "
                                       f"it there, export again, or use tile_mode=windows.")
            if sha256_file(path) != self.metadata[f"{role}_sha256"]:
                raise DenseUnsupported(f"{path} is not the dense graph exported with {self.path.name} (SHA-256 "
                                       f"differs); export again, or use tile_mode=windows.")
            sessions.append(_session(path, self.threads))
        return tuple(sessions)

    def dense_features(self, tiles) -> torch.Tensor:
        """The feature maps of uint8 ``[B, H, W, 3]`` tiles, as
        :meth:`~crack_lightning.inference.backends.TorchBackend.dense_features`."""
        self.dense_geometry()
        (features,) = self._dense[0].run([DENSE_FEATURES], {DENSE_INPUT: np.ascontiguousarray(to_numpy(tiles),
                                                                                          dtype=np.uint8)})
        return torch.from_numpy(features)

    def dense_scores(self, features, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """(crack probability ``[R * C]``, every class's ``[R * C, N]``) of the windows starting at
        feature cells ``rows`` x ``cols`` of a stitched feature map, row by row, as
        :meth:`~crack_lightning.inference.backends.TorchBackend.dense_scores`."""
        self.dense_geometry()
        feed = {DENSE_FEATURES: np.ascontiguousarray(to_numpy(features), dtype=np.float32),
                "rows": np.asarray(rows, np.int64), "cols": np.asarray(cols, np.int64)}
        (logits,) = self._dense[1].run(["logits"], feed)
        return self._calibrated(None, logits)

    def describe(self) -> str:
        """'contract 2, onnx-int8': what the file is, for logs."""
        contract = "1" if self.legacy else self.metadata.get("contract_version", CONTRACT_VERSION)
        return f"contract {contract}, {self.metadata.get('format', 'onnx')}"


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # not ONNX, truncated, an opset this onnxruntime lacks
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CrackLightningError(
            f"{path}: onnxruntime {ort.__version__} cannot load it ({type(err).__name__}: {reason})."
        ) from err


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` per row in float32, as ``CrackClassifier.probabilities``."""
    z = np.asarray(logits, np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def to_numpy(images) -> np.ndarray:
    """A batch as a NumPy array (a tensor is moved to the CPU first)."""
    return images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
