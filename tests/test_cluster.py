"""Sweeps on a cluster, without one (issue 20): one writer per run, and requeue on preemption.

- A 2-task SLURM job: the real ``train.py -m hydra/launcher=slurm trainer=ddp_cpu`` in a process
  where ``sbatch`` only prints a job id and ``srun`` starts the job's tasks as SLURM would (two
  ``python -m submitit.core._submit`` with the variables srun sets, task 0 and 1). Each task
  records every file it writes in the job folder (a Python audit hook): rank 1 writes only its log.
- Preemption: a ``hydra/launcher=local`` job is sent submitit's signal (SIGUSR2) mid-fit; it stops
  after its batch, saves ``interrupted.ckpt``, is requeued by submitit with ``resume=`` and finishes
  in the same folder, with one set of results.
- In-process: ``srun train.py`` tasks share one run folder and only rank 0 owns it; the local
  launcher refuses tasks it cannot rank; a job stopped by SIGTERM leaves a pickle that resumes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import time
from pathlib import Path

import lightning as L
import pytest

from tests.conftest import REPO
from tests.test_launchers import _Sweep

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra: pip install -e '.[slurm]'")

JOB_ID = "4242"
# tiny and quick; the writers of figures and reports stay on (rank 1 must not write them either)
FAST = ["debug=fast", "backbone=custom_cnn", "backbone.pretrained=false", "data.cache.enabled=false",
        "data.split.grouping.workers=1", "callbacks.confidence_intervals.draws=20"]

# train.py with SLURM's two commands replaced: sbatch prints a job id, and waiting for the job's
# results runs its tasks first, as srun would (one process per task, with srun's variables)
FAKE_SLURM = r"""
import os, runpy, subprocess, sys
from submitit.core.utils import JobPaths, pickle_load
from submitit.slurm import slurm

JOB_ID = os.environ["FAKE_JOB_ID"]
slurm.SlurmExecutor.affinity = classmethod(lambda cls: 2)  # "srun is here"
slurm.SlurmExecutor._make_submission_command = lambda self, path: ["echo", "Submitted batch job " + JOB_ID]

def srun(job):
    n = job.num_tasks
    shared = dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=JOB_ID, SLURM_JOB_NAME="train", SLURM_NTASKS=str(n),
                  SLURM_NTASKS_PER_NODE=str(n), SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
                  SLURM_NODELIST="localhost", SLURM_JOB_NODELIST="localhost")
    tasks = []
    for rank in range(n):
        paths = JobPaths(job.paths.folder, JOB_ID, rank)
        env = {**os.environ, **shared, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "WRITES": os.environ["WRITES"] + f"/rank{rank}.txt"}
        with open(paths.stdout, "a") as out, open(paths.stderr, "a") as err:
            # -c: the current folder first on sys.path, as python -m submitit.core._submit has it
            tasks.append(subprocess.Popen([sys.executable, "-u", "-c", os.environ["RANK_TASK"], str(job.paths.folder)],
                                          env=env, stdout=out, stderr=err))
    for task in tasks:
        task.wait()
    results = [pickle_load(JobPaths(job.paths.folder, JOB_ID, rank).result_pickle) for rank in range(n)]
    assert all(outcome == "success" for outcome, _ in results), results
    return [value for _, value in results]

slurm.SlurmJob.results = srun
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(os.environ["TRAIN_PY"], run_name="__main__")
"""

# one srun task: submitit's job entry point, recording every file it writes under $WATCH
RANK_TASK = r"""
import os, runpy, sys
watch, record = os.environ["WATCH"], open(os.environ["WRITES"], "a", buffering=1)

def hook(event, args):
    path = None
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] or 0
        if (any(c in mode for c in "wax+") if mode else flags & (os.O_WRONLY | os.O_RDWR)):
            path = args[0]
    elif event == "os.rename":  # os.replace too: the atomic writes
        path = args[1]
    elif event == "os.remove":
        path = args[0]
    if path is not None:
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(watch + os.sep):
            record.write(os.path.relpath(path, watch) + "\n")

sys.addaudithook(hook)
sys.argv = ["submitit", sys.argv[1]]
runpy.run_module("submitit.core._submit", run_name="__main__")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PauseOnce(L.Callback):
    """``+callbacks.pause._target_=tests.test_cluster.PauseOnce``: at step ``step`` of a job's first
    start, write this process's pid to ``marker`` and wait until the preemption signal has been
    handled (a minute at most), so that the signal lands mid-fit, at a known step."""

    def __init__(self, marker: str, step: int = 1, wait_s: float = 60.0) -> None:
        self.marker, self.step, self.wait_s = Path(marker), step, wait_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self.step or self.marker.exists():
            return
        part = self.marker.with_name(self.marker.name + ".part")
        part.write_text(str(os.getpid()))
        part.replace(self.marker)  # whole, or not there yet
        try:
            from crack_lightning.trainer.cluster import stop_requested
        except ImportError:  # code without it: submitit's own handler acts inside the signal
            def stop_requested():
                return False
        deadline = time.monotonic() + self.wait_s
        while not stop_requested() and time.monotonic() < deadline:
            time.sleep(0.02)


def _summary(sweep: Path) -> dict[str, dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def slurm_job(tmp_path_factory, tiny_data):
    """The 2-task SLURM job's sweep, started in the background (see the module docstring)."""
    tmp = tmp_path_factory.mktemp("slurm_2_tasks")
    (tmp / "writes").mkdir()
    sweep = _Sweep(
        ["-m", "hydra/launcher=slurm", "trainer=ddp_cpu", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.tasks_per_node=2", *FAST, "trainer.max_epochs=1", "finetune=full",
         f"data.root={tiny_data}", f"paths.log_dir={tmp}", f"paths.data_dir={tmp / 'data'}",
         f"hydra.sweep.dir={tmp / 'sweep'}"],
        tmp, command=["-c", FAKE_SLURM],
        env={"FAKE_JOB_ID": JOB_ID, "TRAIN_PY": str(REPO / "train.py"), "RANK_TASK": RANK_TASK,
             "WRITES": str(tmp / "writes"), "WATCH": str(tmp / "sweep" / "0"), "MASTER_PORT": str(_free_port())})
    yield sweep
    sweep.kill()


@pytest.fixture(scope="module")
def preempted_job(tmp_path_factory, tiny_data):
    """A one-job local sweep that PauseOnce holds at step 1 of its first start."""
    tmp = tmp_path_factory.mktemp("requeue")
    sweep = _Sweep(
        ["-m", "hydra/launcher=local", "hydra.launcher.timeout_min=5", *FAST,
         "~callbacks.error_gallery", "~callbacks.augmentation_preview", "~callbacks.confidence_intervals",
         "+callbacks.pause._target_=tests.test_cluster.PauseOnce", f"+callbacks.pause.marker={tmp / 'paused'}",
         f"data.root={tiny_data}", f"paths.log_dir={tmp}", f"paths.data_dir={tmp / 'data'}",
         f"hydra.sweep.dir={tmp / 'sweep'}"], tmp)
    sweep.marker = tmp / "paused"
    yield sweep
    sweep.kill()


def _writes(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.is_file() else set()


def test_two_task_slurm_job_writes_its_run_files_from_rank_0_only(slurm_job):
    sweep = slurm_job
    returncode, output = sweep.result()
    assert returncode == 0, output[-3000:]
    job = sweep.dir / "0"
    tmp = sweep.dir.parent
    task_1 = "".join(p.read_text() for p in (sweep.dir / ".submitit" / JOB_ID).glob(f"{JOB_ID}_1_log.*"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in task_1  # one training over the two tasks
    rank0, rank1 = _writes(tmp / "writes" / "rank0.txt"), _writes(tmp / "writes" / "rank1.txt")

    assert rank1 == {"train_rank1.log"}, sorted(rank1)  # no .hydra/, train.log, job.json, figures, ...
    assert "Rank 1: " in (job / "train_rank1.log").read_text()
    on_disk = {p.relative_to(job).as_posix() for p in job.rglob("*") if p.is_file()}
    assert on_disk - {"train_rank1.log"} <= rank0, sorted(on_disk - rank0)  # every run file is rank 0's
    for name in (".hydra/config.yaml", "train.log", "job.json", "metrics.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "splits.csv", "report.md", "confusion_matrix.png"):
        assert name in on_disk and name in rank0, name
    train_log = (job / "train.log").read_text()
    assert "All 2 ranks hold identical weights" in train_log and "Rank 1: " not in train_log
    assert json.loads((job / "job.json").read_text())["status"] == "completed"
    assert _summary(sweep.dir)["0"]["status"] == "completed"


def test_preempted_local_job_is_requeued_and_finishes_in_its_folder(preempted_job):
    sweep = preempted_job
    for _ in range(3000):  # the job pauses mid-fit (PauseOnce), or the sweep ends
        if sweep.marker.is_file() or sweep.proc.poll() is not None:
            break
        time.sleep(0.05)
    assert sweep.marker.is_file(), sweep.log.read_text()[-3000:]
    os.kill(int(sweep.marker.read_text()), signal.SIGUSR2)  # what submitit_local sends before the time limit
    returncode, output = sweep.result()
    assert returncode == 0, output[-3000:]

    job = sweep.dir / "0"
    log = (job / "train.log").read_text()
    # stopped after the batch it was in, saved, requeued by submitit, continued from that checkpoint
    assert log.count("Interrupted at epoch 0, step 1: saved") == 1, log  # mid-epoch: batch 1 of 2
    assert "Requeued job" in log
    assert log.count("Resuming ") == 1 and "checkpoints/interrupted.ckpt (logger step" in log, log
    submitit_log = "".join(p.read_text() for p in (sweep.dir / ".submitit").glob("*/*_0_log.*"))
    assert submitit_log.count("Starting with JobEnvironment") == 2 and "Job completed successfully" in submitit_log
    # one run in one folder: results once, the first start's .hydra/ kept, the second's beside it
    record = json.loads((job / "job.json").read_text())
    assert record["status"] == "completed" and record["interruptions"] == 1, record
    assert json.loads((job / "metrics.json").read_text())["test/acc"] >= 0
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    resumed = [p for p in (job / ".hydra").iterdir() if p.is_dir()]
    assert len(resumed) == 1 and any(o.startswith("resume=") for o in
                                     (resumed[0] / "overrides.yaml").read_text().replace("- ", "").split())
    with open(job / "csv" / "metrics.csv", newline="") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("train/loss_epoch")}
    assert epochs == {"0", "1", "2"}  # all of debug=fast's 3 epochs, each once
    rows = _summary(sweep.dir)
    assert list(rows) == ["0"] and rows["0"]["status"] == "completed"


SRUN_TASK = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": JOB_ID}


def _compose_run(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_srun_tasks_of_train_py_share_one_run_folder_and_rank_0_owns_it(tmp_path, monkeypatch, capsys):
    """``srun python train.py``: each task composes its own config. Without a given folder they
    would make one run folder each (one line, exit 2); with one, task 1 checks nothing of the
    folder task 0 is filling, writes no .hydra/ and logs to train_rank1.log."""
    from crack_lightning.cli.run_folder import OwnFolders

    for key, value in SRUN_TASK.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}"]  # what it may create
    with pytest.raises(SystemExit) as stop:
        OwnFolders().on_run_start(_compose_run(paths))
    assert stop.value.code == 2
    assert "srun started 2 tasks" in capsys.readouterr().err

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_rank1.log").write_text("task 1 got there first\n")
    OwnFolders().on_run_start(_compose_run([*paths, f"hydra.run.dir={run}"]))  # task 0: the folder is still new
    (run / ".hydra").mkdir()
    (run / "train.log").write_text("task 0\n")
    monkeypatch.setenv("SLURM_PROCID", "1")
    config = _compose_run([*paths, f"hydra.run.dir={run}"])
    OwnFolders().on_run_start(config)  # no "holds .hydra, train.log" refusal
    assert config.hydra.output_subdir is None and config.hydra.job.name == "train_rank1"


def test_local_launcher_refuses_tasks_it_cannot_rank(tmp_path, capsys):
    from hydra.utils import instantiate

    config = _compose_run(["hydra/launcher=local", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path}"])
    launcher = instantiate(config.hydra.launcher)
    with pytest.raises(SystemExit) as stop:
        launcher.launch([["model.lr=0.001"]], initial_job_idx=0)
    assert stop.value.code == 2 and "tasks_per_node=2" in capsys.readouterr().err


def test_a_job_stopped_by_sigterm_leaves_a_pickle_that_resumes(tmp_path):
    """SIGTERM (scancel, a preemption without submitit's signal) stops the fit and is not
    requeued by us; a requeue by SLURM itself reloads the job's pickle, which now says resume=."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import open_dict
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths

    from crack_lightning import SIGTERM_EXIT

    job_dir = tmp_path / "sweep" / "0 a,b"  # a folder Hydra's override parser must get quoted
    (job_dir / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 3}, job_dir / "checkpoints" / "interrupted.ckpt")
    config = _compose_run(["hydra/launcher=local", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    with open_dict(config.hydra):
        config.hydra.runtime.output_dir = str(job_dir)
    launcher = instantiate(config.hydra.launcher)
    delayed = DelayedSubmission(launcher, ["model.lr=0.001"], "hydra.sweep.dir", 0, "id", {})
    delayed.set_timeout(5, 3)
    paths = JobPaths(tmp_path / "submitit", job_id="7")
    paths.folder.mkdir(parents=True)
    handler = SignalHandler(None, paths, delayed)
    with pytest.raises(SystemExit) as stop:
        launcher._stopped(SystemExit(SIGTERM_EXIT), config, type("Env", (), {"global_rank": 0})(),
                          handler.checkpoint_and_try_requeue, signal.SIGUSR2)
    assert stop.value.code == SIGTERM_EXIT  # the process still ends as stopped
    again = DelayedSubmission.load(paths.submitted_pickle)
    overrides = again.args[0]
    assert overrides[0] == "model.lr=0.001" and overrides[1] == f"resume='{job_dir}'"
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(overrides[1]).value() == str(job_dir)
    assert again._timeout_countdown == 3  # a SIGTERM uses up no time-out
