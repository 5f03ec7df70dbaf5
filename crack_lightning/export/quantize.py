"""``format=onnx-int8``: static INT8 quantization of the checked fp32 file, published only if it
holds on the test split.

onnxruntime's ``quantize_static`` calibrates activation ranges on validation images of the
checkpoint's own run (``<run>/splits.csv``), QDQ format, int8 weights per channel, uint8
activations (the x86 U8S8 kernels). The graph's resize and normalisation stay float: they
run once per image and rounding them to int8 would move every pixel (their constants are
spread to the input's shape first, :func:`spread_normalisation`). Then the fp32 and int8
files score the test split side by side at the model's operating threshold; the int8 file
replaces nothing when recall drops by more than ``max_recall_drop`` or accuracy by more than
``max_accuracy_drop``. The dense graphs stay fp32 (see :class:`Int8Gate`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from crack_lightning import CrackLightningError
from crack_lightning.data.augmentation import to_resized_image
from crack_lightning.data.splits import Sample
from crack_lightning.export.graph import read_rgb
from crack_lightning.inference.checkpoint import LoadedClassifier
from crack_lightning.inference.onnx_backend import INPUT, OnnxBackend

log = logging.getLogger(__name__)

MODEL_OPS = ("Conv", "Gemm", "MatMul")  # the first of them ends the preprocessing nodes
SPEED_IMAGES = 32  # images per timed round, fp32 and int8 alternating (BENCHMARKS.md has the long run)


class Int8Refused(CrackLightningError):
    """The int8 model loses more recall or accuracy on the test split than the config allows."""


@dataclass
class Pixels:
    """Images as the graph takes them at the model's input size: uint8 ``[N, h, w, 3]``."""

    loaded: LoadedClassifier

    def __call__(self, files: list[Path]) -> np.ndarray:

        resize = to_resized_image(self.loaded.card.preprocessing.to_timm_data_config())
        return np.stack([resize(read_rgb(f)).permute(1, 2, 0).numpy() for f in files])


class _Calibration:
    """onnxruntime's CalibrationDataReader: one image per call, then None."""

    def __init__(self, pixels: np.ndarray):
        self.batches = iter([{INPUT: pixels[i:i + 1]} for i in range(len(pixels))])

    def get_next(self):
        return next(self.batches, None)


def quantize(fp32: Path, int8: Path, calibration: np.ndarray, size: tuple[int, int]) -> None:
    """Write the static int8 quantization of ``fp32`` (input resized to ``size``, (h, w)) to
    ``int8``, its metadata kept."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32))
    for i, node in enumerate(model.graph.node):  # the quantizer's exclusions name nodes
        node.name = node.name or f"node_{i}_{node.op_type}"
    preprocessing = preprocessing_nodes(model)
    spread_normalisation(model, preprocessing, size)
    named = int8.with_name(f"{int8.stem}.named.onnx")
    onnx.save(model, str(named))
    advice = _Drop("Please consider")  # onnxruntime's pre-processing advice: its fusions are in the graph already
    logging.getLogger().addFilter(advice)
    try:
        quantize_static(str(named), str(int8), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[node.name for node in preprocessing],
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        logging.getLogger().removeFilter(advice)
        named.unlink(missing_ok=True)
        Path(f"{named}-inferred.onnx").unlink(missing_ok=True)  # what some calibrators leave beside it
    quantized = onnx.load(str(int8))
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, {**{p.key: p.value for p in model.metadata_props}, "format": "onnx-int8"})
    onnx.save(quantized, str(int8))


def preprocessing_nodes(model: onnx.ModelProto) -> list:
    """The graph's nodes before its first model op: the resize and normalisation, kept float."""
    first = next(i for i, node in enumerate(model.graph.node) if node.op_type in MODEL_OPS)
    return list(model.graph.node[:first])


def spread_normalisation(model: onnx.ModelProto, preprocessing, size: tuple[int, int]) -> None:
    """Give the normalisation's per-channel constants (``[1, 3, 1, 1]``) the resized image's whole
    shape, ``[1, 3, h, w]``: the same numbers. onnxruntime runs the int8 graph channels-last (its
    NHWC QLinearConv moves the input's transpose ahead of them), where a 3-vector broadcast over
    the last axis took a fifth of the int8 time at batch 16; a map of the input's shape is a
    plain elementwise loop (BENCHMARKS.md)."""
    names = {name for node in preprocessing if node.op_type in ("Sub", "Mul", "Div", "Add") for name in node.input}
    h, w = (int(v) for v in size)
    spread = False
    for init in model.graph.initializer:
        if init.name in names and tuple(init.dims) == (1, 3, 1, 1) and init.data_type == onnx.TensorProto.FLOAT:
            values = np.broadcast_to(onnx.numpy_helper.to_array(init), (1, 3, h, w))
            init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(values), init.name))
            spread = True
    if spread:  # the recorded [1, 3, 1, 1] shapes would contradict shape inference now
        del model.graph.value_info[:]


class _Drop(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def decisions(backend: OnnxBackend, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    """Crack probabilities of ``pixels``, ``batch`` images a run."""
    return np.concatenate([backend(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def rates(probabilities: np.ndarray, cracks: np.ndarray, threshold: float) -> dict[str, float]:
    """Recall and accuracy of crack-or-not at ``threshold``, as predict.py decides (p > threshold)."""
    said = probabilities > threshold
    recall = float(said[cracks].mean()) if cracks.any() else float("nan")
    return {"recall": recall, "accuracy": float((said == cracks).mean())}


def speed(backends: dict[str, OnnxBackend], pixels: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """Images per second of each backend on the same images, in alternating rounds (best of ``rounds``)."""
    pixels = pixels[:SPEED_IMAGES]
    best = {name: float("inf") for name in backends}
    for _ in range(rounds):
        for name, backend in backends.items():
            start = time.perf_counter()
            decisions(backend, pixels, batch=16)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(pixels) / seconds for name, seconds in best.items()}


@dataclass
class Int8Gate:
    """export_onnx's ``finish``: quantize the checked fp32 file in place, or refuse.

    The dense graphs beside it stay fp32: the gate measures patches, and whole photos have no
    labelled test split to gate a quantized dense graph on; the dense path is already about
    one forward pass per photo (issue 19 part 1), so int8 would buy less there.
    """

    loaded: LoadedClassifier
    calibration: list[Path]
    test: list[Sample]
    check: bool
    max_recall_drop: float
    max_accuracy_drop: float

    @classmethod
    def from_config(cls, cfg, loaded: LoadedClassifier, val: list[Sample], test: list[Sample]) -> Int8Gate:
        csv_path = loaded.path.parent.parent / "splits.csv"
        if not val:
            raise CrackLightningError(
                f"format=onnx-int8 calibrates on the validation images of the checkpoint's run, and {csv_path} "
                f"{'lists none' if csv_path.is_file() else 'is missing'}: export <run>/checkpoints/best.ckpt with "
                f"its run's splits.csv and data.root in place, or use format=onnx.")
        if not test and cfg.check:
            raise CrackLightningError(
                f"format=onnx-int8 checks recall and accuracy on the run's test split, and {csv_path} "
                f"{'lists none' if csv_path.is_file() else 'is missing'}: restore it, or add check=false to publish "
                f"the int8 file unchecked.")
        count = int(cfg.calibration_images)
        step = max(1, len(val) // count)
        return cls(loaded, [s.path for s in val][::step][:count], list(test), bool(cfg.check),
                   float(cfg.max_recall_drop), float(cfg.max_accuracy_drop))

    def __call__(self, path: Path) -> dict:
        pixels = Pixels(self.loaded)
        int8 = path.with_name(f"{path.stem}.int8{path.suffix}")
        start = time.perf_counter()
        try:
            quantize(path, int8, pixels(self.calibration), tuple(self.loaded.card.preprocessing.input_size))
            notes = {"calibration_images": len(self.calibration), "quantize_seconds": time.perf_counter() - start}
            if self.check:
                notes.update(self.judge(path, int8, pixels([s.path for s in self.test])))
            else:
                log.warning("format=onnx-int8 with check=false: the int8 file is not checked on the test split.")
            os.replace(int8, path)
        finally:
            int8.unlink(missing_ok=True)
        return notes

    def judge(self, fp32: Path, int8: Path, pixels: np.ndarray) -> dict:
        """Both files on the test pixels: their rates, the drops, the speeds; :class:`Int8Refused` past a limit."""
        backends = {"fp32": OnnxBackend(fp32), "int8": OnnxBackend(int8)}
        cracks = np.isin([s.label for s in self.test], self.loaded.card.positive_labels)
        threshold = self.loaded.card.threshold
        got = {name: rates(decisions(b, pixels), cracks, threshold) for name, b in backends.items()}
        drops = {key: got["fp32"][key] - got["int8"][key] for key in ("recall", "accuracy")}
        per_s = speed(backends, pixels)
        notes = {"test_images": len(pixels), "threshold": threshold, "fp32": got["fp32"], "int8": got["int8"],
                 "recall_drop": drops["recall"], "accuracy_drop": drops["accuracy"],
                 "images_per_s": per_s, "speedup": per_s["int8"] / per_s["fp32"]}
        log.info("int8 vs fp32 on %d test images at threshold %.3g: recall %.4f vs %.4f (drop %.4f), accuracy %.4f vs "
                 "%.4f (drop %.4f); %.0f vs %.0f images/s (%.2fx)", len(pixels), threshold, got["int8"]["recall"],
                 got["fp32"]["recall"], drops["recall"], got["int8"]["accuracy"], got["fp32"]["accuracy"],
                 drops["accuracy"], per_s["int8"], per_s["fp32"], notes["speedup"])
        over = [f"{key} drops {drops[key]:.4f} > max_{key}_drop={limit:g}"
                for key, limit in (("recall", self.max_recall_drop), ("accuracy", self.max_accuracy_drop))
                if drops[key] > limit]  # NaN (no cracks in the test split) passes: no recall to lose
        if over:
            raise Int8Refused(f"the int8 model on {len(pixels)} test images at threshold {threshold:.3g}: "
                              f"{'; '.join(over)} (fp32 recall {got['fp32']['recall']:.4f}, accuracy "
                              f"{got['fp32']['accuracy']:.4f}). Calibrate on more images (calibration_images=), "
                              f"raise the limit, or use format=onnx.")
        return notes
