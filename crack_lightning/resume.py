"""``python train.py <overrides> resume=<run folder>``: continue a stopped or killed run in its own folder.

Hydra writes into the resumed folder (``hydra.run.dir`` is ``resume`` when it is set, see
conf/train.yaml), so the saved split (``splits.csv``), the checkpoints, the TensorBoard
and CSV logs are those of the run. This module picks the checkpoint to continue from,
checks the command is the run's own, and hides the TensorBoard points the killed run
logged after that checkpoint (they are logged again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from crack_lightning import CrackLightningError
from crack_lightning.cli.run_folder import is_rank_zero
from crack_lightning.utils.files import atomic_path
from crack_lightning.inference.model_files import require_model_file

log = logging.getLogger(__name__)

# Keys (and key prefixes) that may differ between the run's command and the resuming one:
# where the run folder is comes from resume= itself; loader processes change no result.
FREE_KEYS = ("resume", "ckpt_path", "paths.log_dir", "data.loader.num_workers", "data.loader.persistent_workers",
             "data.loader.pin_memory")


@dataclass(frozen=True)
class ResumePoint:
    ckpt_path: str | None  # passed to trainer.fit
    logger_step: int | None = None  # the checkpoint's logger step: TensorBoard points after it are hidden


def resume_point(cfg: DictConfig) -> ResumePoint:
    """Where ``trainer.fit`` starts: ``ckpt_path`` if given (a plain Lightning resume; in a
    new run folder unless ``resume`` names the run), else the newest checkpoint of the
    ``resume`` run, else nothing (a fresh run)."""
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if ckpt_path:  # one line for a missing or foreign file, not Lightning's trace from inside fit
        require_model_file(ckpt_path, onnx_ok=False, key="ckpt_path")
    if resume is None:
        return ResumePoint(ckpt_path)
    run = Path(resume)
    if not run.is_dir():
        raise CrackLightningError(f"resume={resume}: no such run folder.")
    check_same_config(cfg, run)
    ckpt = Path(ckpt_path) if ckpt_path else newest_checkpoint(run / "checkpoints", exclude=best_checkpoint_name(cfg))
    step = _logger_step(ckpt)
    log.info("Resuming %s from %s (logger step %d)", run, ckpt, step)
    return ResumePoint(str(ckpt), step)


def best_checkpoint_name(cfg: DictConfig) -> str | None:
    """``best.ckpt``'s name in ``cfg``: never a resume source (an earlier state, rewritten after fitting)."""
    node = cfg.get("callbacks", {}).get("model_checkpoint") if cfg.get("callbacks") else None
    return f"{node.filename}.ckpt" if node and node.get("filename") else None


def newest_checkpoint(folder: Path, exclude: str | None = None) -> Path:
    """The checkpoint with the most training in ``folder`` (global step, then write time),
    among last/step/interrupted checkpoints. ``exclude`` is the best-model checkpoint: an
    earlier state, rewritten after fitting by the operating point."""
    candidates = [p for p in folder.glob("*.ckpt") if not p.name.startswith(".") and p.name != exclude]
    ranked = []
    for path in candidates:
        try:
            ranked.append(((_global_step(path), path.stat().st_mtime_ns), path))
        except Exception as err:  # not written by AtomicCheckpointIO: may be truncated
            log.warning("Skipping %s: not a checkpoint this run wrote whole (%s)", path, type(err).__name__)
    if not ranked:
        raise CrackLightningError(
            f"resume={folder.parent}: no checkpoint in {folder} (the run stopped before its first one); "
            f"start it again without resume=."
        )
    return max(ranked)[1]


def _load(path: Path) -> dict:
    # mmap: only the few bytes of the counters are read, not the weights
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _global_step(path: Path) -> int:
    return int(_load(path)["global_step"])


def _logger_step(path: Path) -> int:
    ckpt = _load(path)
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError):
        return int(ckpt["global_step"])


def check_same_config(cfg: DictConfig, run: Path) -> None:
    """Refuse to resume with a different config than the run was started with: another
    seed, model or schedule would silently mix two experiments in one run folder."""
    saved_file = run / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        log.warning("%s not found: cannot check that the resumed config is the run's own", saved_file)
        return
    saved = _flatten(OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False))
    now = _flatten(OmegaConf.to_container(cfg, resolve=False))
    differ = sorted(
        k for k in saved.keys() | now.keys()
        if saved.get(k) != now.get(k) and not any(k == f or k.startswith(f + ".") for f in FREE_KEYS)
    )
    if differ:
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:5])
        more = f" (+{len(differ) - 5} more)" if len(differ) > 5 else ""
        raise CrackLightningError(
            f"resume={run}: the config differs from the run's ({shown}{more}); resume with the run's own "
            f"overrides: python train.py {' '.join(o for o in overrides if not o.startswith('resume='))} resume={run}"
        )


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def continue_logs(loggers: list, point: ResumePoint) -> None:
    """Continue the run's TensorBoard and CSV logs in place, without the points the killed
    run logged after the checkpoint (they are logged again): TensorBoard hides events at or
    after a session restart's step; Lightning's CSV writer would delete metrics.csv, so its
    rows up to the checkpoint are written back."""
    if point.logger_step is None or not is_rank_zero():  # the log files are rank 0's
        return
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter

    after = point.logger_step + 1  # the checkpoint's own step was logged before it was saved
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            SummaryWriter(logger.log_dir, purge_step=after).close()
        elif isinstance(logger, CSVLogger):
            _keep_csv_rows(logger, before=after)


def _keep_csv_rows(logger, before: int) -> None:
    import csv

    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        keys, rows = reader.fieldnames or [], [r for r in reader if int(float(r.get("step") or 0)) < before]
    writer = logger.experiment  # creating it deletes metrics.csv
    writer.metrics_keys = list(keys)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:  # a kill now must not lose the rows
        out = csv.DictWriter(f, fieldnames=keys)
        out.writeheader()
        out.writerows(rows)
