"""The prediction task: a checkpoint (or ONNX file) over images -> ``predictions.csv``.

``predict.py`` at the top of the repository is the Hydra entry point; this module holds
the logic so that tests can call :func:`predict` with a composed config. One bad file
must not cost the other thousand their predictions, so an unreadable image becomes a
row with an ``error`` instead of an exception. With ``tile=true`` each input is a whole
photo scored window by window (:mod:`crack_lightning.inference.tiling`).

A crack is predicted when its probability -- of any crack class, when there are more --
is *above* the threshold, the rule the operating point was chosen for on validation
(torchmetrics' rule, ``operating_point.rule``). With two classes ``label`` is that verdict;
with more it is the most likely class, and the verdict gets its own ``crack`` column beside
one calibrated ``prob_<class>`` per class (:func:`columns`).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from crack_lightning.utils.parallel import auto_workers, progress_bar
from crack_lightning.utils.files import atomic_path
from crack_lightning.inference import tiling
from crack_lightning.inference.backends import Backend, open_backend
from crack_lightning.inference.photos import PhotoScorer
from crack_lightning.inference.settings import check_predict
from crack_lightning.inference.sources import ImageFiles, Inputs, find_inputs, reason

log = logging.getLogger(__name__)

COLUMNS = ["path", "crack_probability", "label", "threshold", "model_hash", "error", "true_label"]
PHOTO_COLUMNS = ["crack_area_fraction", "tiles", "crack_tiles", "tiles_csv", "heatmap"]


def columns(class_names: list[str], tile: bool = False) -> list[str]:
    """``predictions.csv``'s header: two classes as ever; more add the verdict ``crack`` (true /
    false) and ``prob_<class>`` per class in label order (rows sum to 1), before the photo columns."""
    classes = [] if len(class_names) == 2 else ["crack", *(f"prob_{name}" for name in class_names)]
    return COLUMNS + classes + (PHOTO_COLUMNS if tile else [])


def resolve_batch_size(batch_size, device: str) -> int:
    """``auto``: 16 on a CPU (small batches stay in cache: MobileNetV2 at 224 px scored a
    4032x3024 photo in 20.8 s at 16 against 31.8 s at 64 on our 2-core machine), 256 on a GPU."""
    if batch_size == "auto":
        return 256 if device.startswith("cuda") else 16
    return int(batch_size)


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


@dataclass
class Scores:
    """What the model says of every input, before a threshold: per file the crack probability and
    every class's (NaN rows for an unreadable file) and the error; whole photos also their
    windows' scores and per-tile CSV. :func:`write_predictions` turns them into predictions.csv
    at any threshold -- ``predict.py``'s and the app's, so the two write the same file."""

    inputs: Inputs
    probs: np.ndarray
    classes: np.ndarray
    errors: list[str]
    photos: list[tiling.PhotoScores | None] | None = None  # tile=true
    tiles_csv: list[Path | None] = field(default_factory=list)
    drawn_at: float | None = None  # the threshold its heatmaps were drawn at while scoring (predict.py's)


def predict(cfg: DictConfig, backend: Backend | None = None) -> dict:
    """Predict every input, write ``predictions.csv`` (and ``metrics.json`` when the input
    folder has class sub-folders); return the summary that is also logged."""
    check_predict(cfg)  # predict.py checked already; here for in-process callers
    device = resolve_device(cfg.device)
    backend = backend or open_backend(cfg.ckpt, device, cfg.get("operating_point"))
    threshold = backend.card.threshold if cfg.threshold is None else float(cfg.threshold)
    inputs = find_inputs(str(cfg.input), backend.card.class_names)
    out = Path(cfg.output_dir)
    log.info("Model %s (%s), threshold %.6g, %d input(s)",
             backend.path, backend.model_hash, threshold, len(inputs.files))
    heatmap = (OmegaConf.to_container(cfg.heatmap) if cfg.get("heatmap") else {}) if cfg.tile else None
    scores = score(cfg, backend, inputs, out, resolve_batch_size(cfg.batch_size, device), threshold, heatmap)
    summary = write_predictions(scores, backend, threshold, out, heatmap)
    failed = [(path, error) for path, error in zip(inputs.files, scores.errors) if error]
    for path, error in failed[:10]:
        log.warning("%s: %s", path, error)
    if len(failed) > 10:
        log.warning("... and %d more unreadable: see the error column", len(failed) - 10)
    names = backend.card.class_names
    if inputs.labels:
        summary["metrics"] = labelled_metrics(scores.probs, scores.errors, inputs, threshold, out / "metrics.json",
                                              backend.card.positive_labels,
                                              scores.classes.argmax(axis=1) if len(names) > 2 else None)
    if cfg.get("gradcam") and not cfg.tile:
        summary["gradcam"] = _gradcam(backend, inputs.files, scores.probs, scores.errors, int(cfg.gradcam),
                                      out / "gradcam.png", [names[k] for k in scores.classes.argmax(axis=1)])
    return summary


def score(cfg: DictConfig, backend: Backend, inputs: Inputs, out: Path, batch_size: int,
          threshold: float | None = None, heatmap: dict | None = None) -> Scores:
    """The model over ``inputs``: patches in batches through a DataLoader, or (``cfg.tile``) each
    photo window by window, its per-tile CSV into ``out/tiles/`` -- and, with ``threshold`` and
    ``heatmap`` known, its heatmap while the photo is decoded (else written later, decoding it again)."""
    if cfg.tile:
        return _tile_all(cfg, backend, inputs, out, batch_size, threshold, heatmap)
    return Scores(inputs, *_classify_all(cfg, backend, inputs, batch_size))


def write_predictions(scores: Scores, backend: Backend, threshold: float, out: Path,
                      heatmap: dict | None = None) -> dict:
    """``out/predictions.csv`` at ``threshold`` (whole photos: and ``out/heatmaps/``, drawn with the
    ``heatmap`` settings); the summary that is logged."""
    names, inputs, tile = backend.card.class_names, scores.inputs, scores.photos is not None
    rows = []
    for i, path in enumerate(inputs.files):
        row = prediction_row(str(path), scores.probs[i], scores.classes[i], scores.errors[i], threshold,
                             backend.model_hash, names, inputs.labels[i] if inputs.labels else None)
        if tile:
            row += _photo_cells(path, scores.photos[i], scores.tiles_csv[i], threshold, out, heatmap,
                                redraw=scores.drawn_at != threshold)
        rows.append(row)
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns(names, tile))
        writer.writerows(rows)
    ok = [not e for e in scores.errors]
    summary = {
        "images": len(rows),
        "errors": len(rows) - sum(ok),
        "cracks": int(sum(1 for p, good in zip(scores.probs, ok) if good and p > threshold)),
        "threshold": threshold,
        "model_hash": backend.model_hash,
        "predictions": str(out / "predictions.csv"),
    }
    log.info("%d image(s): %d crack(s), %d unreadable -> %s", summary["images"], summary["cracks"], summary["errors"],
             summary["predictions"])
    return summary


def _photo_cells(path: Path, photo: tiling.PhotoScores | None, tiles_csv: Path | None, threshold: float, out: Path,
                 heatmap: dict | None, redraw: bool = True) -> list:
    """A whole photo's columns of predictions.csv (``PHOTO_COLUMNS``) at ``threshold``; its heatmap
    drawn at that threshold unless it was while scoring (``redraw``: the photo is read again, photos
    are not kept in memory)."""
    if photo is None:
        return [""] * len(PHOTO_COLUMNS)
    result, png = photo.at(threshold), _heatmap_png(out, tiles_csv)
    if redraw:
        tiling.write_heatmap(tiling.load_photo(path), photo.grid, result, threshold, png, **(heatmap or {}))
    return [f"{result.crack_area_fraction:.6f}", result.tiles, result.crack_tiles, str(tiles_csv), str(png)]


def _gradcam(backend: Backend, files: list[Path], probs: np.ndarray, errors: list[str], count: int, path: Path,
             labels: list[str]):
    """``gradcam=N``: Grad-CAM of the crack class (more classes: of the predicted ``labels``)
    over the N images with the highest crack probability (a checkpoint only: an ONNX file has
    no gradients)."""
    from crack_lightning.evaluation.gradcam import gradcam_figure
    from crack_lightning.reports.plots import save_figure

    model = getattr(backend, "model", None)
    if model is None:
        log.warning("gradcam=%d: needs a checkpoint (ckpt=...ckpt); an ONNX file has no gradients. Skipped.", count)
        return None
    ranked = [i for i in np.argsort(-np.nan_to_num(probs, nan=-1.0)) if not errors[i]][:count]
    pre = backend.card.preprocessing
    dataset = ImageFiles([files[i] for i in ranked], pre)
    images = torch.stack([dataset[k][0] for k in range(len(ranked))])
    two = len(backend.card.class_names) == 2
    titles = [f"{files[i].name}\ncrack prob {probs[i]:.3f}" + ("" if two else f", {labels[i]}") for i in ranked]
    fig = gradcam_figure(model, images, pre.mean, pre.std, titles, suptitle=f"Grad-CAM of the "
                         f"{'crack' if two else 'predicted'} class: the {len(ranked)} most likely cracks")
    save_figure(fig, path)
    log.info("Grad-CAM of the %d most likely cracks -> %s", len(ranked), path)
    return str(path)


def prediction_row(path: str, prob: float, class_probs, error: str, threshold: float, model_hash: str,
                   names: list[str], truth: int | None = None) -> list[str]:
    """One row of ``predictions.csv`` (:func:`columns`, without the whole-photo ones): empty cells
    for an unreadable file; with more than two classes ``label`` is the most likely class and the
    verdict has a column of its own (``crack``), then every class's probability."""
    many = len(names) > 2
    ok, crack = not error, bool(prob > threshold)
    label = names[int(np.argmax(class_probs)) if many else int(crack)] if ok else ""
    row = [path, f"{prob:.9g}" if ok else "", label, f"{threshold:.9g}", model_hash, error,
           names[truth] if truth is not None else ""]
    if many:
        row += [str(crack).lower(), *(f"{p:.9g}" for p in class_probs)] if ok else [""] * (1 + len(names))
    return row


def _classify_all(cfg: DictConfig, backend: Backend, inputs: Inputs,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per file its crack probability and every class's (NaN for an unreadable file), and the
    errors, in batches through a DataLoader (decoding in workers)."""
    dataset = ImageFiles(inputs.files, backend.card.preprocessing)
    workers = auto_workers() if cfg.num_workers == "auto" else int(cfg.num_workers)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=min(workers, len(dataset) - 1))
    probs, classes, errors = [], [], []
    batches = iter(loader)  # workers fork before the progress bar's thread starts
    with progress_bar(len(dataset), "predicting", enabled=sys.stdout.isatty()) as advance:
        for images, batch_errors in batches:
            bad = np.array([bool(e) for e in batch_errors])
            crack, every = backend.scores(images)
            probs.append(np.where(bad, np.nan, np.asarray(crack, np.float32).reshape(-1)))
            classes.append(np.where(bad[:, None], np.nan, every))
            errors += list(batch_errors)
            advance(len(batch_errors))
    return np.concatenate(probs), np.concatenate(classes), errors


def _heatmap_png(out: Path, tiles_csv: Path) -> Path:
    return out / "heatmaps" / f"{tiles_csv.stem}.png"


def _tile_all(cfg, backend: Backend, inputs: Inputs, out: Path, batch_size: int, threshold: float | None = None,
              heatmap: dict | None = None) -> Scores:
    """Whole-photo mode: per photo its windows' scores, the probability of the most crack-like
    window (the photo's) and of its every class, the per-tile CSV, and the heatmap at ``threshold``
    when it is known."""
    scorer = PhotoScorer(backend, cfg.tile_size, cfg.tile_stride, cfg.tile_mode, batch_size, cfg.tile_block_megapixels)
    n = len(inputs.files)
    scores = Scores(inputs, np.full(n, np.nan), np.full((n, len(backend.card.class_names)), np.nan), [], [], [])
    used = set()
    log.info("Whole photos: %s", scorer.describe())
    total = sum(scorer.count(path) for path in inputs.files)
    with progress_bar(total, "tiles", enabled=sys.stdout.isatty()) as advance:
        for i, path in enumerate(inputs.files):
            tiles_csv = out / "tiles" / f"{_unique(path.stem, used)}.csv"
            try:
                photo = tiling.load_photo(path)
            except Exception as err:  # as ImageFiles: a row with the reason, the next photo
                scores.errors.append(reason(err))
                scores.photos.append(None)
                scores.tiles_csv.append(None)
                continue
            scores.photos.append(scorer(photo, tiles_csv, advance))
            if threshold is not None and heatmap is not None:
                tiling.write_heatmap(photo, scores.photos[-1].grid, scores.photos[-1].at(threshold), threshold,
                                     _heatmap_png(out, tiles_csv), **heatmap)
            del photo
            scores.probs[i], scores.classes[i] = float(scores.photos[-1].probabilities.max()), scores.photos[-1].classes
            scores.errors.append("")
            scores.tiles_csv.append(tiles_csv)
    scores.drawn_at = threshold if heatmap is not None else None
    return scores


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3`` ... when photos in different folders share a name."""
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def labelled_metrics(probs: np.ndarray, errors: list[str], inputs: Inputs, threshold: float, path: Path,
                     positive: tuple[int, ...] | list[int] = (1,), predicted: np.ndarray | None = None) -> dict:
    """Precision, recall, F1 and accuracy of cracks (the ``positive`` labels) against the rest
    at ``threshold`` over the readable images of the class folders; the missed cracks are the
    number to watch. With the ``predicted`` labels (more than two classes) also the share of
    images whose most likely class is their folder's, ``class_accuracy``."""
    # here, not at the top: torchmetrics takes seconds to import and only labelled runs need it
    from torchmetrics.functional.classification import (
        binary_accuracy, binary_f1_score, binary_precision, binary_recall, binary_stat_scores)

    keep = [i for i, (label, e) in enumerate(zip(inputs.labels, errors)) if label is not None and not e]
    if not keep:
        return {}
    preds = torch.as_tensor(probs[keep], dtype=torch.float32)
    target = torch.as_tensor([int(inputs.labels[i] in positive) for i in keep])
    tp, fp, tn, fn, _ = (int(v) for v in binary_stat_scores(preds, target, threshold=threshold))
    metrics = {
        "threshold": threshold,
        "images": len(keep),
        "unlabelled_or_unreadable": len(inputs.files) - len(keep),
        "class_folders": inputs.class_folders,
        **{name: round(float(metric(preds, target, threshold=threshold)), 6) for name, metric in (
            ("accuracy", binary_accuracy), ("precision", binary_precision), ("recall", binary_recall),
            ("f1", binary_f1_score))},
        "missed_cracks": fn,
        "false_alarms": fp,
        "counts": {"true_positive": tp, "false_positive": fp, "true_negative": tn, "false_negative": fn},
    }
    if predicted is not None:
        metrics["class_accuracy"] = round(float(np.mean([predicted[i] == inputs.labels[i] for i in keep])), 6)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("Metrics at threshold %.6g over %d labelled image(s): %s", threshold, len(keep),
             json.dumps({k: metrics[k] for k in ("accuracy", "precision", "recall", "f1",
                                                 "missed_cracks", "false_alarms")}))
    return metrics
