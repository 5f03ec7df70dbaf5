"""Fit the operating point on the validation split and store it with the checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from crack_lightning.model_card import SECTION
from crack_lightning.evaluation import fit_point
from crack_lightning.utils.files import atomic_path, write_atomic
from crack_lightning.trainer.distributed import gather_uneven

log = logging.getLogger(__name__)


class OperatingPoint(L.Callback):
    """When the best checkpoint is validated (``trainer.validate(ckpt_path=best)``, which
    ``train()`` runs after fitting), fit how its scores are read:

    * ``temperature`` (if ``calibrate``): temperature scaling on the validation logits;
    * ``threshold``: the best precision at recall on cracks >= ``target_recall`` (a missed
      crack costs more than a false alarm), on the calibrated probabilities.

    Both go into the model (``set_operating_point``: its buffers and its card) and into the
    validated checkpoint file (rewritten atomically), so ``trainer.test``, ``predict.py``
    and ``export.py`` use them. The choice and the validation calibration error
    before/after are written to ``operating_point.json`` and logged under
    ``calibration/``. Validation during ``fit`` is left alone.
    """

    def __init__(self, output_dir: str, target_recall: float = 0.99, calibrate: bool = True, n_bins: int = 15):
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"eval.target_recall={target_recall}: choose a recall in (0, 1].")
        self.output_dir = Path(output_dir)
        self.target_recall = target_recall
        self.calibrate = calibrate
        self.n_bins = n_bins
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.VALIDATING

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._logits, self._targets = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active(trainer):
            self._logits.append(outputs["logits"].float())
            self._targets.append(outputs["targets"])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer) or not self._logits:
            return
        # every rank gets the whole split, each image once (see trainer.distributed)
        logits = gather_uneven(torch.cat(self._logits), pl_module.device).cpu()
        targets = gather_uneven(torch.cat(self._targets), pl_module.device).cpu()
        point = fit_point(pl_module, logits, targets, self.target_recall, self.calibrate, self.n_bins)
        if point["cracks"] == 0:
            log.warning("The validation split has no cracks: the threshold stays 0.5 and is not chosen for recall.")
        pl_module.set_operating_point(point)
        for key in ("temperature", "threshold", "ece_before", "ece_after"):
            pl_module.log(f"calibration/{key}", float(point[key]), rank_zero_only=True)
        if trainer.is_global_zero:
            write_atomic(self.output_dir / "operating_point.json", json.dumps(point, indent=2) + "\n")
            if trainer.ckpt_path:
                store_operating_point(Path(trainer.ckpt_path), point)
        trainer.strategy.barrier()  # the test that follows reads the rewritten file on every rank
        log.info(
            "Operating point on %d validation images: temperature %.3f, threshold %.4f for recall >= %.3f "
            "(precision %.3f, recall %.3f); ECE %.4f -> %.4f",
            point["images"], point["temperature"], point["threshold"], self.target_recall, point["precision"],
            point["recall"], point["ece_before"], point["ece_after"],
        )
        for problem in point["warnings"] if trainer.is_global_zero else []:
            log.warning("Operating point: %s.", problem)


def store_operating_point(ckpt_path: Path, point: dict) -> None:
    """Write the operating point (its ``threshold`` and ``temperature`` as the state dict's
    buffers, the whole of it in the card) into an existing checkpoint file, atomically."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    state["temperature"] = torch.tensor(float(point["temperature"]))
    state["threshold"] = torch.tensor(float(point["threshold"]))
    checkpoint.setdefault(SECTION, {})["operating_point"] = point
    with atomic_path(ckpt_path) as tmp:
        torch.save(checkpoint, tmp)
