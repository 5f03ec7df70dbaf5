"""Lightning on a cluster: who requeues a preempted job, and where its fit stops.

Two mechanisms could requeue a SLURM job, and only one may:

- Lightning's ``SLURMEnvironment(auto_requeue=True)``, its default whenever it detects SLURM: on
  SIGUSR1 it saves ``hpc_ckpt_<n>.ckpt`` from inside the signal handler (wherever the step is, maybe
  between two parameter updates) and calls ``scontrol requeue``; the next ``fit(ckpt_path=None)``
  under SLURM then restores that file by itself, past ``resume=``'s choice of checkpoint;
- submitit's handler of its own signal (SIGUSR2, ``signal_delay_s`` before the time limit).

Lightning's is switched off here (:func:`cluster_kwargs`): under the submitit launcher, submitit
requeues, once the fit has stopped (:mod:`crack_lightning.sweeps.launcher`); a plain ``sbatch`` of
train.py requeues from its batch script (docs/slurm.md). Both need a fit that stops cleanly when
the signal comes: :func:`request_stop` is the signal's handler, and :class:`StopOnRequest` stops
the fit where Lightning stops it on SIGTERM -- after the current training batch (and the
validation that may follow it) -- on every rank at the same batch; ``InterruptCheckpoint`` then
saves ``checkpoints/interrupted.ckpt`` and the process exits 143, as on SIGTERM. (Not by raising
SIGTERM: Lightning's handler broadcasts from inside the signal handler, each rank checks its own
flag, and a rank still in validation stops after its first batch there; ranks signalled at
different moments, or with validation shards of different lengths, could stop at different points.)

Private name of Lightning 2.6.6 used here: ``Trainer._signal_connector.received_sigterm``, the
flag Lightning's SIGTERM handler sets and its loops test.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import SimpleNamespace

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from crack_lightning.cli.run_folder import under_srun

log = logging.getLogger("crack_lightning")

CHECK_EVERY = 8  # training steps between the ranks' checks under DDP
# signals received (any rank) and whether a fit stopped for one (every rank, also those not signalled)
_stop = SimpleNamespace(signals=[], stopped=False)


def preempt_signal() -> signal.Signals:
    """submitit's preemption / time-limit signal: ``SUBMITIT_PREEMPT_SIGNAL`` (default USR2), as
    ``submitit.JobEnvironment`` reads it; ``#SBATCH --signal=USR2@120`` for a plain sbatch."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def request_stop(signum: int, frame=None) -> None:
    """The preemption signal's handler: the running fit stops after its current batch."""
    _stop.signals.append(signum)


def stop_requested() -> bool:
    """Whether this process got the signal, or its fit stopped because a rank did."""
    return bool(_stop.signals) or _stop.stopped


def reset_stop_request() -> None:
    _stop.signals.clear()
    _stop.stopped = False


def on_cluster() -> bool:
    """A SLURM task (Lightning's test, :func:`~crack_lightning.cli.run_folder.under_srun`) or a
    submitit job (its job processes and the DDP ranks they start inherit ``SUBMITIT_EXECUTOR``)."""
    return "SUBMITIT_EXECUTOR" in os.environ or under_srun()


class StopOnRequest(Callback):
    """Stop the fit as on SIGTERM once :func:`request_stop` ran on any rank.

    At ``on_train_batch_end`` (under DDP every ``CHECK_EVERY`` steps) the ranks take the largest of
    their flags; once it is set, every rank sets Lightning's SIGTERM flag, so each ends the fit
    after this batch with ``SIGTERMException``. A validation run that follows the batch is let
    finish first: the flag is down while it runs. For the fit it handles the signal itself where
    nobody else does (``srun train.py``); it leaves a handler alone (our launcher's, submitit's).
    """

    def __init__(self) -> None:
        self._previous = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        sig = preempt_signal()
        if stage == "fit" and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(sig) in (signal.SIG_DFL, None):
            self._previous = signal.signal(sig, request_stop)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(preempt_signal(), self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if _stop.stopped:
            return
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # the ranks agree every CHECK_EVERY batches: a collective and a host sync per batch would
            # stall a GPU's queue, and the signal comes minutes (signal_delay_s) before the end
            if trainer.global_step % CHECK_EVERY:
                return
            flag = torch.tensor([1.0 if _stop.signals else 0.0], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if not flag.item():
                return
        elif not _stop.signals:
            return
        _stop.stopped = True
        trainer._signal_connector.received_sigterm = True
        if trainer.is_global_zero:
            log.warning("Preemption or time limit (%s): stopping after this batch (epoch %d, step %d)",
                        ", ".join(signal.Signals(s).name for s in _stop.signals) or "another rank's signal",
                        trainer.current_epoch, trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        if _stop.stopped and trainer.state.fn == TrainerFn.FITTING:
            trainer._signal_connector.received_sigterm = False  # not after this rank's first batch of it

    def on_validation_end(self, trainer, pl_module) -> None:
        if _stop.stopped and trainer.state.fn == TrainerFn.FITTING:
            trainer._signal_connector.received_sigterm = True


def cluster_kwargs(kwargs: dict) -> dict:
    """``Trainer`` keyword arguments on a cluster (:func:`on_cluster`): ``StopOnRequest`` among the
    callbacks, and under SLURM its environment without Lightning's requeue (see the module docstring;
    TorchElastic's variables win over SLURM's in Lightning, so then nothing is chosen here)."""
    if not on_cluster():
        return kwargs
    callbacks, plugins = (_as_list(kwargs.get(key)) for key in ("callbacks", "plugins"))
    kwargs = {**kwargs, "callbacks": [*callbacks, StopOnRequest()]}
    if under_srun() and not TorchElasticEnvironment.detect() \
            and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        kwargs["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=False)]
    return kwargs


def _as_list(value) -> list:
    """A Trainer argument that takes one item or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [] if value is None else [value]
