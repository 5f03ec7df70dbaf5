"""The training task: compose -> fit -> operating point on validation -> test the best checkpoint -> report.

``train.py`` at the top of the repository is the Hydra entry point; this module holds
the logic so that tests and other entry points can call :func:`train` with a config.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from crack_lightning.callbacks import OperatingPoint
from crack_lightning.callbacks.exact_resume import ExactResume
from crack_lightning.callbacks.model_card import ClassWeightsFromData, ModelCardFromData
from crack_lightning.config_checks import OUR_DATA_MODULE, check_config
from crack_lightning.data.labelled import data_classes
from crack_lightning.utils.config import instantiate_group
from crack_lightning.utils.files import write_atomic
from crack_lightning.resume import continue_logs, resume_point
from crack_lightning.reports.run_report import write_run_report
from crack_lightning.trainer import build_trainer, compile_if_asked
from crack_lightning.trainer.checkpoint_io import AtomicCheckpointIO
from crack_lightning.trainer.console import quiet_lightning
from crack_lightning.trainer.strategies import release_processes

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Train, test with the best checkpoint, write the run folder; return the monitored metric's best value."""
    check_config(cfg)
    start = resume_point(cfg)
    quiet_lightning()  # before Lightning's first line (the seed's)
    if cfg.get("seed") is not None:  # 0 is a seed
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    config = OmegaConf.to_container(cfg, resolve=True)
    # the data's classes size the model's head; the card's config keeps them for predict and export
    # (a data module of one's own: the model config says them, two classes by default)
    classes = data_classes(cfg.data) if cfg.data.get("_target_") == OUR_DATA_MODULE else {}
    config["model"].update(classes)
    model = instantiate(cfg.model, **classes)
    datamodule = instantiate(cfg.data, data_config=model.data_config)
    # not a config choice: without the card a checkpoint is of no use to predict.py / export.py
    callbacks = [ModelCardFromData(config), ClassWeightsFromData(), *instantiate_group(cfg.get("callbacks"))]
    if cfg.get("finetune"):
        callbacks.append(instantiate(cfg.finetune))
    # nor is this: without the RNG states a resumed run is not the run it continues; last, to set
    # them after every other callback's on_train_start
    callbacks.append(ExactResume())
    loggers = instantiate_group(cfg.get("logger"))
    continue_logs(loggers, start)
    # checkpoints are complete or absent whenever the process is killed (see checkpoint_io)
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    compile_if_asked(cfg.trainer, model)
    try:
        return _fit_and_test(cfg, config, trainer, model, datamodule, start.ckpt_path, output_dir)
    finally:
        release_processes(trainer)  # DDP: the next job of a sweep starts its own ranks
        if hasattr(datamodule, "release_device_cache"):  # a data module of one's own may lack it
            datamodule.release_device_cache()


@contextmanager
def _ctrl_c_is_ours(trainer):
    """Lightning ends a Ctrl+C in fit (outside the training loop), validate or test with exit(1)
    after a trace-less message; the command says it in one line, status 143 (crack_lightning.cli)."""
    try:
        yield
    except SystemExit as stop:
        if trainer.interrupted and stop.code == 1:
            raise KeyboardInterrupt from None
        raise


def _fit_and_test(cfg, config: dict, trainer, model, datamodule, ckpt_path, output_dir: Path) -> float | None:
    with _ctrl_c_is_ours(trainer):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    checkpoint = trainer.checkpoint_callback
    best_ckpt = checkpoint.best_model_path if checkpoint else ""

    if any(isinstance(cb, OperatingPoint) for cb in trainer.callbacks):
        # validate the best weights once more: OperatingPoint fits the temperature and the
        # recall-targeted threshold there and writes them into best_ckpt for test/predict
        with _ctrl_c_is_ours(trainer):
            trainer.validate(model, datamodule=datamodule, ckpt_path=best_ckpt or None, verbose=False)

    if cfg.get("test", True):
        with _ctrl_c_is_ours(trainer):
            results = trainer.test(model, datamodule=datamodule, ckpt_path=best_ckpt or None, verbose=False)
        metrics = {k: float(v) for k, v in sorted(results[0].items())}
        metrics["best_ckpt"] = best_ckpt
        if cfg.get("eval", {}).get("test_sets") and trainer.is_global_zero and best_ckpt:
            from crack_lightning.evaluation.evaluate import evaluate_test_sets

            metrics.update(evaluate_test_sets(cfg, best_ckpt, output_dir))
        if trainer.is_global_zero:
            write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            log.info("Test metrics: %s", json.dumps(metrics))
            for logger in trainer.loggers:  # TensorBoard's HPARAMS tab: the config next to its results
                if isinstance(logger, TensorBoardLogger):
                    logger.log_hyperparams(config, metrics={k: v for k, v in metrics.items() if isinstance(v, float)})
                    logger.save()

    write_run_report(cfg, output_dir)  # report.md: config, test metrics, figures
    if checkpoint is None or checkpoint.best_model_score is None:
        return None
    return float(checkpoint.best_model_score)
