"""The export task: a checkpoint -> an ``.onnx`` file (``format=onnx``, or ``onnx-int8``
quantized) checked against PyTorch.

``export.py`` at the top of the repository is the Hydra entry point; this module holds
the logic so that tests can call :func:`export` with a composed config. The check runs
real images when it can find some, because random noise exercises a network far from
where it operates (saturated probabilities hide differences): the ``input=`` images,
else the test split of the checkpoint's own run (``<run>/splits.csv``), else noise
with a warning. ``onnx-int8`` calibrates on the run's validation images and is published
only if the test split's recall and accuracy hold (:mod:`.quantize`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.data.splits import Sample, read_splits
from crack_lightning.export.graph import read_rgb
from crack_lightning.export.onnx import export_onnx
from crack_lightning.export.quantize import Int8Gate
from crack_lightning.inference.checkpoint import LoadedClassifier, load_classifier
from crack_lightning.inference.settings import check_export
from crack_lightning.inference.sources import find_inputs

log = logging.getLogger(__name__)

DEFAULT_CHECK_IMAGES = 8


def export(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt`` to ``cfg.format``; returns where it went and the parity result."""
    output = check_export(cfg)  # before the model is loaded: an existing output is refused in a second
    loaded = load_classifier(cfg.ckpt, operating_point=cfg.get("operating_point"))

    images, source = None, "no check"
    if cfg.check:
        count = int(cfg.get("check_images") or DEFAULT_CHECK_IMAGES)
        images, source = check_batch(loaded, cfg.get("input"), count)
    finish = None
    if cfg.format == "onnx-int8":

        finish = Int8Gate.from_config(cfg, loaded, split_samples(loaded, "val"), split_samples(loaded, "test"))

    start = time.perf_counter()
    result = export_onnx(loaded, output, opset=int(cfg.opset), check_images=images, atol=float(cfg.atol),
                         resize_atol=float(cfg.resize_atol), finish=finish)
    seconds = time.perf_counter() - start
    size_mb = output.stat().st_size / 1e6
    dense = (f" and {' + '.join(p.name for p in result.dense)}" if result.dense
             else " (no dense graph: this backbone has none)")
    if result.max_abs_diff is None:
        log.info("Exported %s%s (%.1f MB, opset %d) in %.1f s, unchecked (check=false)", output, dense, size_mb,
                 cfg.opset, seconds)
    else:
        log.info(
            "Exported %s%s (%.1f MB, opset %d) in %.1f s; onnxruntime vs PyTorch on %d %s: max |dp| = %.2e on the "
            "same pixels (atol %.0e), %.2e resized in the graph (resize_atol %.0e)%s",
            output, dense, size_mb, cfg.opset, seconds, len(images), source, result.max_abs_diff, cfg.atol,
            result.resize_abs_diff, cfg.resize_atol,
            "" if result.dense_abs_diff is None else f", dense graph {result.dense_abs_diff:.2e}",
        )
    return {"output": str(output), "max_abs_diff": result.max_abs_diff, "resize_abs_diff": result.resize_abs_diff,
            "dense": [str(p) for p in result.dense] if result.dense else None, "dense_abs_diff": result.dense_abs_diff,
            "check_images": source, "seconds": seconds, **({"int8": result.notes} if result.notes else {})}


def check_batch(loaded: LoadedClassifier, input_spec: str | None, count: int) -> tuple[list[Image.Image], str]:
    """``count`` RGB images as they are (any size) for the parity check, and a word on where they came from."""
    if input_spec:
        files, source = find_inputs(str(input_spec), loaded.card.class_names).files, f"images from input={input_spec}"
    else:
        files = [s.path for s in sorted(split_samples(loaded, "test"), key=lambda s: (s.label, str(s.path)))]
        source = "test images of the run's splits.csv"
    files = _spread(files, count)
    if not files:
        log.warning("No images for the parity check (give input=<folder>); checking on random noise instead.")
        h, w = loaded.card.preprocessing.input_size
        rng = np.random.default_rng(0)
        # half at the input size, half larger: the graph's resize is checked too
        sizes = [(int(h), int(w)) if i % 2 else (int(h) * 3 // 2 + 1, int(w) * 5 // 4) for i in range(count)]
        return [Image.fromarray(rng.integers(0, 256, (*s, 3), dtype=np.uint8)) for s in sizes], "random-noise inputs"
    return [read_rgb(file) for file in files], source


def split_samples(loaded: LoadedClassifier, split: str) -> list[Sample]:
    """The ``split`` images listed in ``<run>/splits.csv`` (checkpoint in ``<run>/checkpoints/``);
    none if the file or the data is gone."""
    csv_path = loaded.path.parent.parent / "splits.csv"
    if not csv_path.is_file():
        return []
    try:
        root = Path(loaded.card.config["data"]["root"])
        return read_splits(csv_path, root, loaded.card.class_names)[split]
    except (CrackLightningError, KeyError, TypeError) as err:
        log.warning("%s: cannot use its %s images (%s).", csv_path, split, err)
        return []


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (all of them if there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]
