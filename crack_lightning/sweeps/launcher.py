"""Hydra's submitit launchers, for jobs of several tasks and for preemptible nodes.

``hydra/launcher=slurm`` and ``hydra/launcher=local`` (conf/hydra/launcher/) name
``hydra_plugins.crack_lightning_launcher.{SlurmLauncher,LocalLauncher}`` (Hydra instantiates
launchers only from the ``hydra_plugins`` namespace): hydra-submitit-launcher 1.2.0's launchers
with :class:`TaskAware` mixed in. submitit runs the launcher object itself in every task of a job
(``srun`` starts one task per GPU): the plugin's ``BaseSubmititLauncher.__call__`` composes the
job's config and hands it to Hydra's ``run_job``, which writes ``.hydra/``, opens ``<job>.log``
and calls train.py's task. :meth:`TaskAware.__call__` does the same, and differs in two ways:

- **One writer per run.** A task of global rank N > 0 runs as rank N of its job:
  ``hydra.output_subdir=null``, ``hydra.job.name=<job>_rank<N>``
  (:func:`~crack_lightning.cli.run_folder.as_rank_child`), so it writes no ``.hydra/`` and logs
  to ``<job>_rank<N>.log``; the task wrapper writes ``job.json``/``error.txt`` on rank 0 only
  (:mod:`crack_lightning.sweeps.job`), Lightning and our callbacks the rest.
- **Preemption and time limits.** submitit's own handler of its signal (SIGUSR2, ``signal_delay_s``
  before the time limit) calls ``checkpoint()`` and requeues from inside the handler, wherever the
  training is (the plugin's ``checkpoint()`` resubmits the job as it was: it starts again from
  scratch). Here the signal only asks the fit to stop after its current batch
  (:mod:`crack_lightning.trainer.cluster`); once it has stopped -- ``checkpoints/interrupted.ckpt``
  written, every rank out of its collectives -- submitit's handler is called: it decides whether to
  requeue (preempted, or timed out fewer than ``max_num_timeout`` times), dumps :meth:`TaskAware.checkpoint`,
  the same job with ``resume=<its folder>`` added, and requeues (``scontrol requeue``; submitit_local
  restarts the task). A job it does not requeue is returned to the sweep as interrupted
  (``job.json``), so the other jobs and the summary go on. A fit stopped by SIGTERM (``scancel``,
  a preemption that sends no USR2) is not requeued, but its pickle gets the ``resume=`` too, so a
  requeue by SLURM itself (``PreemptMode=REQUEUE``) continues the run.

On an upgrade of the pinned versions, check (tests/test_cluster.py runs all of it): the body of
hydra-submitit-launcher 1.2.0's ``BaseSubmititLauncher.__call__``, repeated in
:meth:`TaskAware.__call__`; submitit 1.5.4's handler (``SignalHandler.checkpoint_and_try_requeue``),
found as the signal's handler, and its private ``job_environment._checkpoint`` with the handler's
``_delayed`` / ``_job_paths``, which rewrite the pickle after a SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from omegaconf import DictConfig, open_dict

from crack_lightning import SIGTERM_EXIT
from crack_lightning.cli.entry import fail
from crack_lightning.cli.run_folder import as_rank_child

log = logging.getLogger("crack_lightning")


def _resume_override(job_dir: str) -> str:
    """``resume=<job dir>`` quoted for Hydra's override parser (a path may hold ``,`` ``=`` or spaces)."""
    return "resume='" + job_dir.replace("\\", "\\\\").replace("'", "\\'") + "'"


class TaskAware:
    """Mixed into a ``BaseSubmititLauncher``: the per-task ``__call__`` and the requeue's ``checkpoint``."""

    _resume_dir: str | None = None  # set once a stopped fit left a checkpoint to continue from

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Singleton]) -> JobReturn:
        import submitit

        from crack_lightning.trainer.cluster import preempt_signal, request_stop, reset_stop_request

        Singleton.set_state(singleton_state)
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        env = submitit.JobEnvironment()
        with open_dict(config.hydra.job):
            config.hydra.job.id = env.job_id
            config.hydra.job.num = job_num
        if env.global_rank > 0:
            as_rank_child(config, env.global_rank)
        self._resume_dir = None
        reset_stop_request()
        sig = preempt_signal()
        submitits = signal.signal(sig, request_stop)  # submitit's handler, called below once the fit stopped
        try:
            return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                           job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")
        except SystemExit as stop:
            return self._stopped(stop, config, env, submitits, sig)
        finally:
            signal.signal(sig, submitits)

    def _stopped(self, stop: SystemExit, config: DictConfig, env, submitits, sig) -> JobReturn:
        """After a fit that stopped on a signal: hand the job to submitit to requeue (rank 0), or
        return it to the sweep as interrupted. Any other exit goes on as it was."""
        from submitit.core.utils import UncompletedJobError

        from crack_lightning.sweeps.job import worst_value
        from crack_lightning.trainer.cluster import stop_requested

        job_dir = str(config.hydra.runtime.output_dir)  # run_job set it
        handler = getattr(submitits, "__self__", None)  # submitit's SignalHandler
        stopped, first = stop_requested(), env.global_rank == 0  # submitit's rule: only task 0 requeues
        if not stopped and not (stop.code == SIGTERM_EXIT and first and handler is not None):
            raise stop
        if first:
            self._resume_dir = job_dir if _has_checkpoint(job_dir, config) else None
        if not stopped:  # SIGTERM: no requeue of ours, but one by SLURM itself continues the run
            _resumable_pickle(handler)
            raise stop
        if first:
            how = f"with resume={self._resume_dir}" if self._resume_dir else "from its start (no checkpoint yet)"
            log.warning("Job stopped for %s; submitit requeues it %s if it may", signal.Signals(sig).name, how)
            if callable(submitits):
                try:
                    submitits(sig, None)  # requeues and exits, or raises when the job may not be requeued
                except UncompletedJobError as err:
                    log.warning("%s Continue it later with resume=%s", err, job_dir)
        result = JobReturn(overrides=list(config.hydra.overrides.task), task_name=str(config.hydra.job.name),
                           working_dir=os.getcwd(), status=JobStatus.COMPLETED)  # the sweep goes on
        result.return_value = worst_value(config)
        return result

    def checkpoint(self, sweep_overrides: list[str], *args: Any) -> Any:
        """What submitit requeues: this job again, continuing in its folder when it has a checkpoint."""
        import submitit

        overrides = [o for o in sweep_overrides if not o.startswith("resume=")]
        if self._resume_dir:
            overrides.append(_resume_override(self._resume_dir))
        return submitit.helpers.DelayedSubmission(self, overrides, *args)


def _has_checkpoint(job_dir: str, config: DictConfig) -> bool:
    """Whether ``resume=`` would find a checkpoint to continue from (resume.py's own choice)."""
    from pathlib import Path

    from crack_lightning import CrackLightningError
    from crack_lightning.resume import best_checkpoint_name, newest_checkpoint

    try:
        newest_checkpoint(Path(job_dir) / "checkpoints", exclude=best_checkpoint_name(config))
    except CrackLightningError:
        return False
    return True


def _resumable_pickle(handler) -> None:
    """Rewrite the job's pickle as its ``checkpoint()`` (``resume=``), without requeueing."""
    from submitit.core import job_environment

    delayed = handler._delayed
    job_environment._checkpoint(delayed, handler._job_paths.submitted_pickle, delayed._timeout_countdown)


def refuse_local_tasks(params: dict) -> None:
    """submitit_local gives its tasks no ranks: N tasks would be N separate trainings in one folder."""
    tasks = int(params.get("tasks_per_node") or 1)
    if tasks > 1:
        fail(f"hydra.launcher.tasks_per_node={tasks}: local jobs run one task each; train on several "
             f"processes with trainer=ddp_cpu (or trainer=ddp on GPUs) instead.")
