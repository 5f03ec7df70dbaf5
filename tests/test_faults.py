"""Numerical faults: a NaN/inf training loss stops the run (or skips the batch) and
leaves the last good checkpoint."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from crack_lightning.models.classifier import NonFiniteLossError
from crack_lightning.train import train
from tests.conftest import compose_cfg


class PoisonBatch(L.Callback):
    """Turns one training batch into NaNs (after transfer, before the forward pass)."""

    def __init__(self, epoch: int = 1, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            batch[0].fill_(float("nan"))


POISON = ["+callbacks.poison._target_=tests.test_faults.PoisonBatch", "+callbacks.poison.epoch=1"]


def finite_weights(ckpt) -> bool:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data):
    with pytest.raises(NonFiniteLossError, match=r"train/loss is nan at epoch 1, step \d+ \(batch 0\).*last.ckpt"):
        train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn", *POISON]))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # the end of epoch 0
    assert finite_weights(last)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_nan_loss_can_skip_the_batch(tmp_path, tiny_data):
    with pytest.warns(UserWarning, match="batch skipped"):
        train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn", "model.on_nonfinite_loss=skip", *POISON]))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(v == v for k, v in metrics.items() if k != "best_ckpt")  # no NaN reached the results
    assert finite_weights(run / "checkpoints" / "last.ckpt")
