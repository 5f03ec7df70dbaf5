"""Training progress that reads well where it ends up: Rich's live bar on a terminal; one log
line per epoch (console and ``train.log``) in a pipe, a file, ``nohup``, CI or SLURM.

``conf/callbacks/default.yaml`` builds the ``progress_bar`` callback with :func:`progress_bar`.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from crack_lightning import CrackLightningError

__all__ = ["EpochLog", "progress_bar"]

log = logging.getLogger(__name__)


def progress_bar(live: bool | str = "auto") -> ProgressBar:
    """The progress callback for this console. ``live``: ``"auto"`` (Rich's live bar when
    standard output is a terminal, else :class:`EpochLog`), ``True`` (always the live bar) or
    ``False`` (always :class:`EpochLog`). Off a terminal Rich cannot redraw: it prints its bar
    once at the end, its metrics wrapped into one narrow column."""
    if live not in ("auto", True, False):
        raise CrackLightningError(f"callbacks.progress_bar.live={live!r}: choose auto, true or false.")
    if live == "auto":
        live = sys.stdout.isatty()
    return RichProgressBar() if live else EpochLog()


class EpochLog(ProgressBar):
    """A progress "bar" without a live display: after every training epoch, one log line
    (through :mod:`logging`, so on the console and in ``train.log``) with the epoch's time and
    the metrics the model shows in the progress bar (logged with ``prog_bar=True``)::

        Epoch 3/7 (14 s): train/loss 0.1234 · val/loss 0.1011 · val/acc 0.9625 · ...

    Epochs are numbered as in Lightning's bar and checkpoints, 0 to ``max_epochs - 1``.
    Per-step values (``*_step``) are left out; ``train/loss_epoch`` is shown as ``train/loss``.
    Validation, test and prediction get no line: the task logs their results.

    Hooks:
        ``on_train_start``: once before the first epoch, also when resuming mid-epoch (where
        Lightning skips that epoch's ``on_train_epoch_start``): starts the clock.
        ``on_train_epoch_start``: before each epoch's first batch: restarts the clock.
        ``on_train_epoch_end``: after each epoch's last batch and its validation, once the
        epoch's metrics are reduced: writes the line (rank 0 only; ``setup`` disables the
        other ranks).
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            log.info("%s", self.epoch_line(trainer, time.perf_counter() - self._start))

    @staticmethod
    def epoch_line(trainer: L.Trainer, seconds: float) -> str:
        """``Epoch <n>/<last> (<s> s): <name> <value> · ...``, training metrics first."""
        metrics = {}
        for name, value in trainer.progress_bar_metrics.items():
            if name.endswith("_step") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metrics[name.removesuffix("_epoch")] = float(value)
        names = sorted(metrics, key=lambda n: not n.startswith("train/"))  # stable: logged order otherwise
        text = " · ".join(f"{n} {_number(metrics[n])}" for n in names) or "no metrics"
        last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else None
        epoch = f"Epoch {trainer.current_epoch}" + (f"/{last}" if last is not None else "")
        return f"{epoch} ({seconds:.0f} s): {text}"


def _number(value: float) -> str:
    return f"{value:#.4g}" if math.isfinite(value) else str(value)
