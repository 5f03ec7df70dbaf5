"""Test a trained model on any labelled set, as training tests its own split.

:func:`test_on` is the one way a model meets a set it was not trained on: ``evaluate.py``
(:func:`evaluate`), ``recalibrate.py`` and training's ``eval.test_sets`` all call it. The set
is read by the same data module as training (``data.split.strategy=test``: every image is
test, grouped by photo for the intervals), labelled by the model's own classes, and scored by
``trainer.test`` with the test-stage callbacks (``conf/callbacks/evaluate.yaml``), so a
checkpoint and its ``.onnx`` export get the same metrics, report and figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from crack_lightning.evaluation.scorers import open_scorer
from crack_lightning.models.scoring import CrackScorer
from crack_lightning.reports.run_report import write_run_report
from crack_lightning.trainer import build_trainer
from crack_lightning.trainer.console import quiet_lightning
from crack_lightning.utils.config import instantiate_group
from crack_lightning.utils.files import write_atomic

log = logging.getLogger(__name__)


def test_data(data_cfg: DictConfig, scorer: CrackScorer, output_dir: Path):
    """The data module of ``data_cfg`` with every image as test, prepared for ``scorer``: its
    input size and normalisation, its classes; the split and skipped files go to ``output_dir``."""
    card = scorer.card
    return instantiate(
        data_cfg, data_config=card.preprocessing.to_timm_data_config(),
        model_classes=(list(card.class_names), card.positive_labels),
        image_size=None, augmentation=None, synthetic=None, report_dir=str(output_dir),
        split={**OmegaConf.to_container(data_cfg.split, resolve=True), "strategy": "test",
               "file": str(output_dir / "splits.csv")})


def test_on(scorer: CrackScorer, data_cfg: DictConfig, callbacks_cfg: DictConfig | None, trainer_cfg: DictConfig,
            output_dir: Path, loggers=False, extra_callbacks: list | None = None) -> dict[str, float]:
    """``trainer.test`` of ``scorer`` on every image of ``data_cfg``; the test-stage callbacks of
    ``callbacks_cfg`` write into ``output_dir``. Returns the logged ``test/*`` metrics."""
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = test_data(data_cfg, scorer, output_dir)
    callbacks = instantiate_group(callbacks_cfg, output_dir=str(output_dir))
    trainer = build_trainer(trainer_cfg, callbacks=callbacks + list(extra_callbacks or []), logger=loggers,
                            devices=1, strategy="auto", **({"accelerator": "cpu"} if scorer.onnxruntime else {}))
    results = trainer.test(scorer, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in sorted(results[0].items())}


def evaluate(cfg: DictConfig) -> dict:
    """evaluate.py: ``cfg.ckpt`` tested on ``cfg.data``; ``metrics.json`` and ``report.md`` in the run folder."""
    from crack_lightning.inference.settings import check_evaluate
    check_evaluate(cfg)
    quiet_lightning()
    output_dir = Path(cfg.paths.output_dir)
    scorer, sha256 = open_scorer(cfg.ckpt, cfg.get("operating_point"))
    log.info("Model %s (%s), threshold %.6g%s", cfg.ckpt, sha256[:12], float(scorer.threshold),
             f" (operating point {cfg.operating_point})" if cfg.get("operating_point") else "")
    metrics = test_on(scorer, cfg.data, cfg.get("callbacks"), cfg.trainer, output_dir,
                      loggers=instantiate_group(cfg.get("logger")) or False)
    return write_results(cfg, output_dir, metrics, sha256)


def write_results(cfg: DictConfig, output_dir: Path, metrics: dict, sha256: str) -> dict:
    """``metrics.json`` (the test metrics, the model file and its point) and ``report.md`` of an
    evaluate.py or recalibrate.py run folder."""
    metrics = {**metrics, "ckpt": str(Path(cfg.ckpt).expanduser().resolve()), "model_sha256": sha256,
               "operating_point": cfg.get("operating_point") or "stored"}
    write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_run_report(cfg, output_dir)
    log.info("Test metrics: %s", json.dumps(metrics))
    return metrics


MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
TEST_SETS = "test_sets"  # metrics.json: test_sets/<name>/<metric>, beside the run's own test/<metric>


def set_data(data_cfg: DictConfig, spec) -> DictConfig:
    """The ``data`` node of one ``eval.test_sets`` entry: a folder (``data.root``) or a table
    (``data.manifest``) in place of the training data's, or a mapping of ``data`` keys; the
    training data's loader, screening and cache settings otherwise."""
    data = OmegaConf.to_container(data_cfg, resolve=True)
    data.update(root=None, manifest=None, class_map=None, positive_classes=None, synthetic=None)
    if isinstance(spec, str):
        key = "manifest" if Path(spec).suffix.lower() in MANIFEST_SUFFIXES else "root"
        data[key] = spec
    else:
        data.update(OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec))
    if data["root"] is None:
        data["root"] = data["manifest"] and str(Path(data["manifest"]).parent)
    return OmegaConf.create(data)


def train_domain(cfg: DictConfig) -> str:
    """The training data's name in cross-domain tables: ``eval.domain``, else its folder's (or manifest's) name."""
    if cfg.eval.get("domain"):
        return str(cfg.eval.domain)
    manifest = cfg.data.get("manifest")
    return Path(manifest).stem if manifest else Path(str(cfg.data.root)).name


def evaluate_test_sets(cfg: DictConfig, best_ckpt: str, output_dir: Path) -> dict:
    """``eval.test_sets``: the best checkpoint tested on each named set after the run's own test,
    each into ``<run>/test_sets/<name>/``; returns their metrics as ``test_sets/<name>/<metric>``."""
    from crack_lightning.inference.checkpoint import load_classifier

    out = {"train_domain": train_domain(cfg)}
    scorer = load_classifier(best_ckpt).model  # each test resets the metrics it computed
    for name, spec in sorted(cfg.eval.test_sets.items()):
        folder = output_dir / TEST_SETS / name
        log.info("Test set %s: %s", name, spec)
        metrics = test_on(scorer, set_data(cfg.data, spec), cfg.get("callbacks"), cfg.trainer, folder)
        write_atomic(folder / "metrics.json", json.dumps({**metrics, "ckpt": best_ckpt}, indent=2) + "\n")
        out.update({f"{TEST_SETS}/{name}/{key.removeprefix('test/')}": value for key, value in metrics.items()})
    return out
