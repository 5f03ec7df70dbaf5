"""Distributed strategies that stay correct under freeze-then-unfreeze and under Hydra.

Private names of Lightning 2.6.6 and Hydra 1.3.8 (pinned in pyproject.toml) used here, and why;
on an upgrade, tests/test_ddp.py (a DDP sweep through train.py) checks they still work:

- ``DDPStrategy._setup_model`` (overridden): where DDP wraps the model; the only place to make
  the frozen backbone visible to DDP's reducer (Lightning issue 20340).
- ``DDPStrategy._configure_launcher`` and ``self._launcher`` (overridden, replaced): where the
  strategy picks its launcher; no public hook chooses the child command.
- ``subprocess_script._SubprocessScriptLauncher`` (subclassed), its ``_call_children_scripts``
  (overridden) and ``procs`` (waited for): the launcher that re-runs the script for ranks > 0.
- ``subprocess_script._hydra_subprocess_cmd`` (patched with :func:`rank_command` while the
  children start): Lightning's Hydra child command, which re-runs a whole multirun in every rank.
- ``lightning.fabric.utilities.distributed._destroy_dist_connection``: closes the process group
  (if one is open) so the next job of a sweep opens its own.
- ``hydra._internal.utils.get_args_parser``: Hydra's own command-line parser, to pass the
  ``--config-path/-name/-dir`` the job was started with on to the ranks.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from unittest import mock

import torch
from lightning.fabric.utilities.distributed import _destroy_dist_connection
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import subprocess_script
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger("crack_lightning")


class FinetuneDDPStrategy(DDPStrategy):
    """DDP for freeze-then-unfreeze runs started by Hydra.

    * **The frozen backbone is synchronised once unfrozen.** ``DistributedDataParallel``
      registers only the parameters that require grad when it wraps the model, and
      never looks again (Lightning issue 20340): a backbone frozen at wrap time and
      unfrozen later would train on each rank's own gradients and drift apart. This
      strategy marks every parameter trainable while wrapping, restores the frozen
      flags, and sets ``find_unused_parameters=True`` so the frozen ones are simply
      reported unused (no gradient, no all-reduce) until they are unfrozen.
    * **One run, one output folder.** Lightning starts ranks > 0 by running the script
      again; under Hydra it passes the original command line, which in a multirun
      re-runs the whole sweep in every child. Here each child runs this job alone:
      this job's overrides, its output folder, no ``.hydra/`` of its own, its log in
      ``<job name>_rank<N>.log`` (see :func:`rank_command`).
    * **Checked at the end of training**: every rank holds the same weights (a float64
      checksum of each rank's parameters is all-gathered); a mismatch stops the run.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("find_unused_parameters", True)
        super().__init__(**kwargs)

    def _setup_model(self, model) -> DistributedDataParallel:
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        try:
            return super()._setup_model(model)
        finally:
            for p in frozen:
                p.requires_grad_(False)

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, subprocess_script._SubprocessScriptLauncher):
            self._launcher = _HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def on_train_end(self) -> None:
        super().on_train_end()
        module = self.lightning_module
        checksum = torch.stack([
            sum(p.detach().double().sum() for p in module.parameters()),
            sum(p.detach().double().square().sum() for p in module.parameters()),
        ])
        sums = self.all_gather(checksum).reshape(-1, 2).cpu()
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        log.info("Rank %d: %d trainable parameters at the end of training; weight checksum %.10g",
                 self.global_rank, trainable, float(checksum[0]))
        if not torch.equal(sums, sums[:1].expand_as(sums)):
            raise RuntimeError(f"DDP ranks hold different weights after training (checksums per rank: {sums.tolist()}).")
        if self.is_global_zero:
            log.info("All %d ranks hold identical weights after training.", len(sums))


# set in this process by Lightning's launcher; while they stay, Lightning takes the next
# job of a sweep for a process someone else launched and reuses a dead process group
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class _HydraJobLauncher(subprocess_script._SubprocessScriptLauncher):
    """Lightning's script launcher with :func:`rank_command` as the Hydra child command,
    and :meth:`release` to end a job cleanly so the next job of a sweep starts afresh."""

    _saved_env: dict[str, str | None] | None = None

    def _call_children_scripts(self) -> None:
        self._saved_env = {key: os.environ.get(key) for key in _LAUNCH_ENV}
        with mock.patch.object(subprocess_script, "_hydra_subprocess_cmd", rank_command):
            super()._call_children_scripts()

    def release(self, timeout: float = 120.0) -> None:
        """Close the process group, wait for the ranks this process started (kill them
        after ``timeout`` s) and restore the environment as it was before the launch."""
        _destroy_dist_connection()
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("DDP rank process %d did not exit within %.0f s; killing it.", proc.pid, timeout)
                proc.kill()
        self.procs = []
        for key, value in (self._saved_env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def release_processes(trainer) -> None:
    """End of a training job: under ``FinetuneDDPStrategy`` started from this process,
    close the process group and let the rank processes go (see ``_HydraJobLauncher``).
    Without this the second job of a multirun reuses the first job's process group, whose
    other ranks have exited ("Connection closed by peer"). A no-op otherwise."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if isinstance(launcher, _HydraJobLauncher):
        launcher.release()


def rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command that runs this Hydra job as DDP rank ``local_rank`` (and its cwd).

    Unlike Lightning's own (``sys.argv`` plus the run folder), it drops ``-m`` and the
    sweep lists: the child gets this job's resolved overrides (``hydra.overrides.task``),
    the same config source, and this job's output folder, with ``output_subdir=null``
    so only rank 0 writes ``.hydra/``."""
    import __main__
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    args = get_args_parser().parse_args(sys.argv[1:])
    for flag, value in (("--config-path", args.config_path), ("--config-name", args.config_name),
                        ("--config-dir", args.config_dir)):
        if value is not None:
            command += [flag, value]
    command += list(hydra_cfg.overrides.task)
    command += [f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"', "hydra.output_subdir=null",
                f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}"]
    return command, get_original_cwd()
