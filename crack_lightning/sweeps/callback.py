"""The Hydra callback that summarises a sweep when the multirun ends.

Registered in ``conf/train.yaml`` under ``hydra.callbacks``. Jobs never raise out of
the task function in a multirun (see :mod:`crack_lightning.sweeps.job`), so Hydra
reaches ``on_multirun_end`` even when jobs failed; this callback writes the summary
and then ends the process with status 1 when any job failed, so scripts and CI see it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("crack_lightning")


class SweepSummary(Callback):
    """Write summary.csv/.md/.png into the sweep folder; exit 1 when a job failed."""

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from crack_lightning.sweeps.summary import SUMMARY_MD, write_summary

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            jobs = write_summary(sweep_dir, monitor=config.get("monitor"), mode=config.get("monitor_mode"))
        except Exception:
            log.exception("Could not write the sweep summary of %s "
                          "(rebuild it with: python -m crack_lightning.cli.sweep_summary %s)", sweep_dir, sweep_dir)
            if self.exit_on_failure:
                sys.exit(1)
            return
        failed = [j for j in jobs if not j.ok]
        log.info("Sweep summary: %s (%d jobs, %d failed)", sweep_dir / SUMMARY_MD, len(jobs), len(failed))
        for job in failed:
            log.error("Job %s %s: %s", job.job, job.status, job.error)
        if failed and self.exit_on_failure:
            sys.exit(1)
