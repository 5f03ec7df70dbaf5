"""The export task: a checkpoint -> an ``.onnx`` file checked against PyTorch.

``export.py`` at the top of the repository is the Hydra entry point; this module holds
the logic so that tests can call :func:`export` with a composed config. The check runs
real images when it can find some, because random noise exercises a network far from
where it operates (saturated probabilities hide differences): the ``input=`` images,
else the test split of the checkpoint's own run (``<run>/splits.csv``), else noise
with a warning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from crack_lightning import CrackLightningError
from crack_lightning.data.splits import read_splits
from crack_lightning.inference.checkpoint import LoadedClassifier, load_classifier
from crack_lightning.export.onnx import export_onnx
from crack_lightning.inference.settings import check_export
from crack_lightning.inference.sources import ImageFiles, find_inputs

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

    start = time.perf_counter()
    diff = export_onnx(loaded, output, opset=int(cfg.opset), check_images=images, atol=float(cfg.atol))
    seconds = time.perf_counter() - start
    size_mb = output.stat().st_size / 1e6
    if diff is None:
        log.info("Exported %s (%.1f MB, opset %d) in %.1f s, unchecked (check=false)", output, size_mb, cfg.opset, seconds)
    else:
        log.info(
            "Exported %s (%.1f MB, opset %d) in %.1f s; onnxruntime vs PyTorch on %d %s: max |dp| = %.2e (atol %.0e)",
            output, size_mb, cfg.opset, seconds, len(images), source, diff, cfg.atol,
        )
    return {"output": str(output), "max_abs_diff": diff, "check_images": source, "seconds": seconds}


def check_batch(loaded: LoadedClassifier, input_spec: str | None, count: int) -> tuple[np.ndarray, str]:
    """``count`` preprocessed images for the parity check, and a word on where they came from."""
    if input_spec:
        files, source = find_inputs(str(input_spec), loaded.card.class_names).files, f"images from input={input_spec}"
    else:
        files, source = _test_split_files(loaded), "test images of the run's splits.csv"
    files = _spread(files, count)
    if not files:
        log.warning("No images for the parity check (give input=<folder>); checking on random noise instead.")
        h, w = loaded.card.preprocessing.input_size
        noise = np.random.default_rng(0).standard_normal((count, 3, int(h), int(w)), dtype=np.float32)
        return noise, "random-noise inputs"
    dataset = ImageFiles(files, loaded.card.preprocessing)
    batch = []
    for file, (image, error) in zip(files, dataset):
        if error:
            raise CrackLightningError(f"{file}: cannot be read as an image for the parity check ({error}).")
        batch.append(image.numpy())
    return np.stack(batch), source


def _test_split_files(loaded: LoadedClassifier) -> list[Path]:
    """The test images listed in ``<run>/splits.csv`` (checkpoint in ``<run>/checkpoints/``),
    sorted by class so that :func:`_spread` takes both; none if the file or the data is gone."""
    csv_path = loaded.path.parent.parent / "splits.csv"
    if not csv_path.is_file():
        return []
    try:
        root = Path(loaded.card.config["data"]["root"])
        test = read_splits(csv_path, root, loaded.card.class_names)["test"]
    except (CrackLightningError, KeyError, TypeError) as err:
        log.warning("%s: cannot use its test images for the parity check (%s).", csv_path, err)
        return []
    return [s.path for s in sorted(test, key=lambda s: (s.label, str(s.path)))]


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (all of them if there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]
