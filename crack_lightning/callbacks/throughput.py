"""Training images per second, per epoch, next to the loss curves."""

from __future__ import annotations

import time

import lightning as L


class EpochThroughput(L.Callback):
    """Logs ``train/images_per_sec`` at the end of every training epoch: the epoch's
    training images over the time from its start to its last batch (validation, which
    runs after that batch, is not counted). One number per epoch, so sweeps can compare
    speed without a per-step synchronisation (Lightning's ``ThroughputMonitor`` logs per
    step and synchronises CUDA every batch)."""

    def __init__(self):
        self._start, self._end, self._images = 0.0, None, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resumed mid-epoch, Lightning skips on_train_epoch_start: count from here
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._end, self._images = time.perf_counter(), None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1]) if isinstance(batch, (list, tuple)) else len(batch)
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._end is not None and self._end > self._start:
            rate = self._images * trainer.world_size / (self._end - self._start)
            pl_module.log("train/images_per_sec", rate, on_step=False, on_epoch=True, rank_zero_only=True)
