"""Failure-tolerant multirun jobs.

Hydra 1.3.8 stops a sweep at the first failing job: ``run_job`` catches ``Exception``
but not the ``SystemExit`` of :func:`crack_lightning.exit_on_user_error` (so the
remaining jobs never start), and ``BasicSweeper.sweep`` re-raises any failed job's
exception after the batch (so ``on_multirun_end`` and the summary never run).
:func:`tolerate_job_failure` therefore catches a job's error in multirun mode only,
records it in the job folder and returns normally; the summary callback then sees
``error.txt`` and ends the sweep with a non-zero status. Single runs are untouched.

Only global rank 0 of a multi-task job writes ``job.json``/``error.txt`` (every SLURM task runs
the whole Hydra job). A job stopped by a signal (preemption, time limit: ``SIGTERMException``)
is recorded as ``interrupted``; when it is continued in its folder (``resume=``, as the submitit
launcher requeues it) its ``job.json`` counts the ``interruptions`` and the wall time of every start.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path

from crack_lightning import find_user_error
from crack_lightning.cli.run_folder import is_rank_zero
from crack_lightning.utils.files import write_atomic

log = logging.getLogger("crack_lightning")

ERROR_FILE = "error.txt"
JOB_FILE = "job.json"


def one_line_reason(err: BaseException) -> str:
    """The user-facing message of a CrackLightningError, else ``Type: first line``."""
    user_error = find_user_error(err)
    if user_error is not None:
        return " ".join(str(user_error).split())
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _multirun_job_dir() -> Path | None:
    """This job's folder when running inside a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.runtime.output_dir)


def worst_value(cfg) -> float:
    """What a failed job (or one without a result) returns to the sweeper: the worst value
    for ``monitor_mode``. Hydra's Optuna sweeper needs a number -- on None it fails the
    study, and Optuna refuses NaN -- while an infinity is recorded as a bad trial and the
    search goes on. The basic sweeper ignores return values."""
    mode = cfg.get("monitor_mode", "min") if cfg is not None else "min"
    return float("-inf") if mode == "max" else float("inf")


def _earlier_starts(job_dir: Path) -> dict:
    """What the interrupted starts of this job before this one recorded (a continued job)."""
    try:
        record = json.loads((job_dir / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if record.get("status") != "interrupted":
        return {}
    return {"interruptions": int(record.get("interruptions", 0)) + 1,
            "wall_time_s": float(record.get("wall_time_s") or 0)}


def tolerate_job_failure(task):
    """Decorate a task function: in a multirun, a job's exception is written to
    ``<job dir>/error.txt`` (one line) and logged, and the task returns the worst value
    for ``monitor_mode`` (±inf) so the next job or trial runs; ``<job dir>/job.json``
    records status (completed, failed, interrupted), wall time and the real return value
    (null for a failure). Ranks > 0 of a job write neither file.
    Outside a multirun the task runs unchanged (errors propagate as before)."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        job_dir = _multirun_job_dir()
        if job_dir is None:
            return task(*args, **kwargs)
        writes = is_rank_zero()
        worst = worst_value(args[0] if args else kwargs.get("cfg"))
        start = time.perf_counter()
        earlier = _earlier_starts(job_dir) if writes else {}
        record = {"status": "completed", "error": None, "return_value": None}
        try:
            value = task(*args, **kwargs)
            record["return_value"] = float(value) if isinstance(value, (int, float)) else None
            if record["return_value"] is None or math.isnan(record["return_value"]):
                return worst
            return value
        except Exception as err:  # KeyboardInterrupt still ends the sweep
            reason = one_line_reason(err)
            record.update(status="failed", error=reason)
            if find_user_error(err) is None:
                log.error("Job failed: %s", reason, exc_info=err)  # the traceback goes to train.log
            else:
                log.error("Job failed: %s", reason)
            if writes:
                write_atomic(job_dir / ERROR_FILE, reason + "\n")
            return worst
        except BaseException:  # SIGTERMException (a signal: preemption, time limit), Ctrl+C
            record["status"] = "interrupted"
            raise
        finally:
            record["wall_time_s"] = round(time.perf_counter() - start + earlier.get("wall_time_s", 0.0), 3)
            if earlier:
                record["interruptions"] = earlier["interruptions"]
            if writes:
                _write_json(job_dir / JOB_FILE, record)

    return wrapper
