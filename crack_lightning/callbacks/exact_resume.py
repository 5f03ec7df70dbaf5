"""A run killed mid-epoch and resumed draws the random numbers a run never killed would.

Lightning restores the weights, the optimiser and its loops' counters, not the global random
streams: after a resume the augmentation and dropout drew new numbers. :class:`ExactResume`
stores the RNG states of torch, numpy and Python in every checkpoint (Lightning's
``_collect_rng_states``; numpy's as plain numbers, so the checkpoint still loads with
``weights_only=True``) and sets them back at ``on_train_start``, after the set-up, the sanity
check and the other callbacks' ``on_train_start`` (train.py appends it after those of the config;
the cluster's ``StopOnRequest``, added later, draws nothing), just before the resumed epoch's first
batch is augmented.
Where that epoch continues, in what order, is the data module's
(:meth:`~crack_lightning.data.datamodule.CrackDataModule.state_dict`).

Under DDP the checkpoint holds rank 0's states and every rank gets them back: the ranks are
seeded alike and draw as often each step, so their streams are the same.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

KEY = "rng_states"


def _plain(states: dict) -> dict:
    states = dict(states)
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = [name, torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(gauss)]
    version, state, gauss = states["python"]
    states["python"] = [version, list(state), gauss]
    return states


def _numpy_back(states: dict) -> dict:
    states = dict(states)
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, np.asarray(keys, np.uint32), pos, has_gauss, gauss)
    if not torch.cuda.is_available():
        states.pop("torch.cuda", None)  # a GPU run resumed on a CPU: nothing to set
    return states


class ExactResume(L.Callback):
    """The global RNG states in each checkpoint, set back when a fit resumes from it."""

    def __init__(self):
        self._pending: dict | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = _plain(_collect_rng_states(include_cuda=True))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(KEY)
        if self._pending is None and trainer.state.fn == TrainerFn.FITTING:
            log.warning("The checkpoint holds no random states (written before they were saved): the resumed "
                        "run's augmentation and dropout draw new numbers.")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is not None:
            _set_rng_states(_numpy_back(state))
