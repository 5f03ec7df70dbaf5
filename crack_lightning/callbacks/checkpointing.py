"""Save a checkpoint when training is stopped by SIGTERM or Ctrl+C, and exit cleanly."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from crack_lightning import SIGTERM_EXIT

log = logging.getLogger(__name__)



class InterruptCheckpoint(Checkpoint):
    """Lightning's ``OnExceptionCheckpoint``, for interruptions only, and never a resume source
    behind the user's back.

    Lightning already turns SIGTERM into ``SIGTERMException`` at the next batch boundary
    (the step in progress completes, so the saved state is consistent) and
    ``OnExceptionCheckpoint`` saves on any exception. This narrows and completes it:

    - it is not an ``OnExceptionCheckpoint``: with one among the callbacks, Lightning 2.6 turns
      ``fit(ckpt_path=None)`` into ``"last"`` and restores the newest ``last*.ckpt`` it finds in
      the checkpoint folder, so a new run in an old run's folder silently continued the old run
      (and every run printed two ``ckpt_path`` warnings). Continuing is only ever ``resume=``;
    - only SIGTERM and Ctrl+C save: a crash or a NaN loss (``model.on_nonfinite_loss``)
      must not leave a newer checkpoint than the last good one for ``resume=`` to pick;
    - Ctrl+C during fit is handled like SIGTERM (a first Ctrl+C stops at the next batch
      boundary; a second one interrupts at once), because a ``KeyboardInterrupt`` can land
      inside ``optimizer.step()`` and a checkpoint of half-updated weights is worse than none;
    - ``SIGTERMException`` carries no exit code, so the process would exit 0 as if the run
      had finished: it exits with 143 instead, after one line saying how to resume.

    The file is removed once a fit completes (:meth:`teardown`), so
    an ``interrupted.ckpt`` in a run folder always means the run did not finish.
    """

    def __init__(self, dirpath: str, filename: str = "interrupted", run_dir: str | None = None):
        self.ckpt_path = os.path.join(dirpath, f"{filename}.ckpt")
        self.run_dir = run_dir
        self._previous_sigint: Any = None
        self._training = False  # from on_train_start on: before it there is no state worth saving

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_start: Lightning's SIGTERM handler is in place from here to the end of fit
        self._previous_sigint = signal.getsignal(signal.SIGINT)
        self._training = True

        def first_ctrl_c(signum, frame):
            log.warning("Ctrl+C: stopping after this batch and saving a checkpoint (Ctrl+C again to stop at once)")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.raise_signal(signal.SIGTERM)  # Lightning's SIGTERM handler: stop at the next batch boundary

        signal.signal(signal.SIGINT, first_ctrl_c)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()
        self._training = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        training, self._training = self._training, False
        # a Ctrl+C while the data is prepared would save an untrained model for resume= to pick
        if not training or not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) \
                or trainer.state.fn != TrainerFn.FITTING:
            return
        trainer.save_checkpoint(self.ckpt_path)
        resume = f"; continue with: python train.py <the same overrides> resume={self.run_dir}" if self.run_dir else ""
        log.warning(
            "Interrupted at epoch %d, step %d: saved %s%s",
            trainer.current_epoch, trainer.global_step, self.ckpt_path, resume,
        )
        if isinstance(exception, SIGTERMException):
            exception.code = SIGTERM_EXIT

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a fit that ends without an exception leaves no interrupted.ckpt
            trainer.strategy.remove_checkpoint(self.ckpt_path)
