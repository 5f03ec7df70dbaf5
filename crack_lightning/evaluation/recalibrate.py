"""Refit a model's operating point on a few labelled images of a new site (``recalibrate.py``).

A model trained on one surface keeps ranking cracks on another better than its threshold
suggests: cross-domain failures are mostly recall failures at the stored threshold, and
refitting the threshold on ~50 labelled target images recovers much of it (see README, "Will it
hold at your site?"). :func:`recalibrate` tests the model on the site's images as
``evaluate.py`` does (the "before"), refits the temperature and the recall-targeted threshold on
them with training's own rule (:func:`~crack_lightning.evaluation.fit_point`), and stores the
result as a *named* operating point in a copy of the model file in the run folder -- the
original is never touched. ``predict.py`` / ``evaluate.py`` / ``export.py`` read it with
``operating_point=<name>``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import onnx
import torch
from torchmetrics.functional.classification import binary_f1_score, binary_precision, binary_recall

from crack_lightning.callbacks.domains import ImageResults, PerImageTest
from crack_lightning.evaluation import fit_point
from crack_lightning.evaluation.evaluate import test_on, write_results
from crack_lightning.evaluation.intervals import metric_intervals
from crack_lightning.evaluation.scorers import open_scorer
from crack_lightning.model_card import SECTION
from crack_lightning.utils.config import instantiate_group
from crack_lightning.inference.model_files import DENSE_ROLES, dense_paths
from crack_lightning.utils.files import atomic_path, sha256_file, write_atomic

log = logging.getLogger(__name__)
REPORTED = ("recall", "precision", "f1")  # at each point's threshold, with 95 % intervals


class SiteImages(PerImageTest):
    """Keeps the test epoch's per-image results and the split's groups (for the intervals)."""

    def evaluate(self, trainer, pl_module, images: ImageResults) -> None:
        split_groups = getattr(trainer.datamodule, "split_groups", None)
        self.images, self.groups = images, split_groups("test") if split_groups else None


def at_point(scorer, images: ImageResults, groups, temperature: float, threshold: float) -> dict:
    """Recall, precision and F1 of cracks at ``threshold`` on ``temperature``-scaled scores, each with
    its 95 % interval (Wilson, clustered by group; F1 bootstrapped)."""
    probs = scorer.crack_probability(images.logits, temperature)
    cracks = scorer.is_crack(images.targets)
    predicted = probs > threshold
    values = {key: float(metric(probs, cracks, threshold=threshold)) for key, metric in (
        ("recall", binary_recall), ("precision", binary_precision), ("f1", binary_f1_score))}
    correct = (predicted.long() == cracks).numpy()
    found = metric_intervals(probs.numpy(), cracks.numpy(), correct, threshold, groups, draws=500)
    out = {"threshold": threshold, "temperature": temperature,
           "missed_cracks": int(((cracks == 1) & ~predicted).sum())}
    for key in REPORTED:
        low, high = found[f"{key}_at_threshold"]
        out[key] = values[key]
        out[f"{key}_ci"] = None if math.isnan(low) else [float(low), float(high)]  # (numpy's: no pickle in a ckpt)
    return out


def recalibrate(cfg) -> dict:
    """recalibrate.py: fit ``cfg.name``'s operating point on ``cfg.data``; write the model copy,
    ``recalibration.json`` and the "before" evaluation into the run folder."""
    from crack_lightning.inference.settings import check_recalibrate
    from crack_lightning.trainer.console import quiet_lightning

    check_recalibrate(cfg)
    quiet_lightning()
    output_dir = Path(cfg.paths.output_dir)
    source = Path(cfg.ckpt).expanduser()
    scorer, sha256 = open_scorer(source, cfg.get("operating_point"))
    site = SiteImages()
    metrics = test_on(scorer, cfg.data, cfg.get("callbacks"), cfg.trainer, output_dir,
            loggers=instantiate_group(cfg.get("logger")) or False, extra_callbacks=[site])
    images = site.images
    point = fit_point(scorer, images.logits, images.targets, float(cfg.eval.target_recall),
                      bool(cfg.eval.calibrate), int(cfg.eval.n_bins), split="site", confident=bool(cfg.confident))
    where = cfg.data.get("manifest") or cfg.data.get("root")
    point.update(name=str(cfg.name), data=str(where), model_sha256=sha256)
    before = at_point(scorer, images, site.groups, float(scorer.temperature), float(scorer.threshold))
    after = at_point(scorer, images, site.groups, point["temperature"], point["threshold"])
    point["before"], point["after"] = before, after
    written = write_model(source, output_dir, str(cfg.name), point)
    result = {"name": str(cfg.name), "model": str(written), "from": str(source.resolve()), "images": len(images.targets),
              "cracks": point["cracks"], "target_recall": point["target_recall"], "before": before, "after": after,
              "warnings": point["warnings"]}
    write_atomic(output_dir / "recalibration.json", json.dumps(result, indent=2) + "\n")
    write_results(cfg, output_dir, metrics, sha256)  # the "before", as evaluate.py writes it
    _log(result)
    return result


def _log(result: dict) -> None:
    def says(side: dict) -> str:
        parts = [f"threshold {side['threshold']:.4g}"]
        for key in REPORTED:
            ci = side[f"{key}_ci"]
            parts.append(f"{key} {side[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        return ", ".join(parts)

    log.info("On %d site images (%d cracks), before: %s", result["images"], result["cracks"], says(result["before"]))
    log.info("After recalibration to recall >= %g: %s", result["target_recall"], says(result["after"]))
    for problem in result["warnings"]:
        log.warning("Operating point %s: %s.", result["name"], problem)
    log.info("Wrote %s with operating point %r (the original is unchanged); use it with: python predict.py ckpt=%s "
             "operating_point=%s input=...", result["model"], result["name"], result["model"], result["name"])


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _save_with(source: Path, target: Path, changes: dict[str, str]) -> None:
    """A copy of the ONNX file ``source`` at ``target`` with these metadata entries changed."""
    model = onnx.load(str(source))
    props = {**{p.key: p.value for p in model.metadata_props}, **changes}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))


def write_model(source: Path, output_dir: Path, name: str, point: dict) -> Path:
    """A copy of the model file ``source`` in ``output_dir`` with ``point`` stored as ``name``
    beside its other operating points (its own default one unchanged)."""
    target = output_dir / f"{source.stem}-{name}{source.suffix}"
    if source.suffix.lower() == ".onnx":
        meta = _metadata(source)
        changes = {"operating_points": json.dumps({**json.loads(meta.get("operating_points") or "{}"), name: point})}
        for role, copy in zip(DENSE_ROLES, dense_paths(target)):
            dense = source.with_name(meta[f"{role}_graph"]) if meta.get(f"{role}_graph") else None
            if dense and dense.is_file():  # whole photos: its dense graphs come along, naming their new main file
                _save_with(dense, copy, {"dense_graph_of": target.name})
                changes.update({f"{role}_graph": copy.name, f"{role}_sha256": sha256_file(copy)})
        _save_with(source, target, changes)
        return target
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    section = checkpoint[SECTION]
    section["operating_points"] = {**(section.get("operating_points") or {}), name: point}
    with atomic_path(target) as tmp:
        torch.save(checkpoint, tmp)
    return target
