"""``hydra/launcher=slurm`` and ``hydra/launcher=local``: the submitit plugin's launchers with
:class:`crack_lightning.sweeps.launcher.TaskAware` (one writer per run, requeue with ``resume=``).

Hydra imports every module of ``hydra_plugins`` at start-up, so this one stays light, and defines
nothing without the ``slurm`` extra (pip install -e '.[slurm]').
"""

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # no slurm extra: no launchers
    pass
else:
    from crack_lightning.sweeps.launcher import TaskAware, refuse_local_tasks

    class SlurmLauncher(TaskAware, submitit_launcher.SlurmLauncher):
        """A job array on SLURM, one task per GPU (crack_lightning/sweeps/launcher.py)."""

    class LocalLauncher(TaskAware, submitit_launcher.LocalLauncher):
        """Each job in a process of its own on this machine, as on SLURM (one task per job)."""

        def launch(self, job_overrides, initial_job_idx: int):
            refuse_local_tasks(self.params)
            return super().launch(job_overrides, initial_job_idx)
