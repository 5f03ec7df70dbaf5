"""Sweeps through Hydra's submitit launcher (the `slurm` extra).

- ``hydra/launcher=local`` (submitit_local with our launcher): the real ``train.py`` sends each job to its own
  process through submitit; job folders, the sweep summary and submitit's logs are
  checked, and a failing job is recorded (``tolerate_job_failure`` sees the multirun
  mode inside the submitit worker) while the sweep ends with status 1.
- ``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml): composed with
  ``trainer=ddp`` and rendered into the sbatch script the plugin would submit; no cluster.
- Lightning under ``srun``: with SLURM's variables it picks ``SLURMEnvironment`` (without its
  own requeue) and starts no processes of its own (one SLURM task per GPU).
- Ranks, preemption and requeue under the launchers: tests/test_cluster.py.
- Process pools inside a submitit job end (submitit makes job processes ignore SIGTERM).

The two sweeps start first, in the background, and the other tests run meanwhile.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF, REPO, compose_cfg

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra: pip install -e '.[slurm]'")
pytest.importorskip("submitit", reason="needs the slurm extra: pip install -e '.[slurm]'")


def _sweep_args(tmp: Path, data_root: Path, lrs: str) -> list[str]:
    return [
        "-m", "hydra/launcher=local",
        "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0",
        "debug=fast", "backbone=custom_cnn", "backbone.pretrained=false",
        # no process pools in the jobs (decoded cache, grouping): a pool start per job saved;
        # pools under submitit are tested by test_process_pools_end_under_submitits_signal_handlers
        "data.cache.enabled=false", "data.split.grouping.workers=1",
        f"data.root={data_root}", f"paths.log_dir={tmp}", f"paths.data_dir={tmp / 'data'}",
        f"hydra.sweep.dir={tmp / 'sweep'}", f"model.lr={lrs}",
    ]


class _Sweep:
    """``python train.py <args>`` started in the background (run_train_py waits; this does not);
    ``command`` replaces ``train.py`` (e.g. ``["-c", script]``), ``env`` adds variables."""

    def __init__(self, args: list[str], tmp: Path, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.dir, self.log = tmp / "sweep", tmp / "main.log"
        # as run_train_py, minus SLURM_*: a SLURM allocation around the test run would leak
        # into the local jobs and make Lightning believe it runs under srun (docs/slurm.md)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        full_env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
        command = command or [str(REPO / "train.py")]
        with open(self.log, "w") as out:  # its own process group: submitit's workers go with it on kill
            self.proc = subprocess.Popen([sys.executable, *command, *args], cwd=REPO, env=full_env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def result(self, timeout: float = 300) -> tuple[int, str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"sweep still running after {timeout} s: {self.log.read_text()[-3000:]}")
        return self.proc.returncode, self.log.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def submitit_sweeps(tmp_path_factory, tiny_data):
    """A real sweep through hydra/launcher=local, started in the background so this module's
    other tests run meanwhile: model.lr=1e-3,-1 (job 0 trains, job 1 fails its config
    check). One sweep, not one that passes and one that fails: the suite has 5 minutes."""
    sweeps = {}
    for name, lrs in {"mixed": "1e-3,-1"}.items():
        tmp = tmp_path_factory.mktemp(f"submitit_{name}")
        sweeps[name] = _Sweep(_sweep_args(tmp, tiny_data, lrs), tmp)
    yield sweeps
    for sweep in sweeps.values():
        sweep.kill()


@pytest.fixture(scope="module", autouse=True)
def _start_sweeps_first(request):
    """Start the sweeps before this module's other tests, which then run while they do."""
    if any(item.module is request.module and "submitit_sweeps" in item.fixturenames
           for item in request.session.items):
        request.getfixturevalue("submitit_sweeps")


def _summary_rows(sweep: Path) -> dict[str, dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


def _submitit_logs(sweep: Path) -> dict[str, Path]:
    """submitit's folder per job (named by job id), for those with a log."""
    return {d.name: d for d in (sweep / ".submitit").iterdir() if list(d.glob("*_log.out"))}


def _compose_hydra(overrides: list[str], sweep_dir: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", return_hydra_config=True,
                       overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", *overrides])


@pytest.mark.parametrize(("overrides", "tasks", "nodes"), [
    ([], 1, 1),                                                   # 1 GPU per job
    (["trainer=ddp", "hydra.launcher.gpus_per_node=4"], 4, 1),    # one task per GPU
    (["trainer=ddp", "trainer.devices=4", "hydra.launcher.tasks_per_node=4", "hydra.launcher.gpus_per_node=4"], 4, 1),
    (["trainer=ddp", "hydra.launcher.gpus_per_node=8", "++trainer.num_nodes=2"], 8, 2),
])
def test_slurm_launcher_composes_with_ddp(tmp_path, overrides, tasks, nodes):
    cfg = _compose_hydra(overrides, tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.crack_lightning_launcher.launcher.SlurmLauncher"
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == tasks
    assert launcher["nodes"] == nodes
    assert launcher["submitit_folder"] == f"{tmp_path}/.submitit/%j"
    assert launcher["partition"] is None and launcher["setup"] is None and launcher["timeout_min"] > 0
    if "trainer=ddp" in overrides:
        assert cfg.trainer.strategy._target_.endswith("FinetuneDDPStrategy")
        assert cfg.trainer.devices in ("auto", tasks)


class _Submitted(Exception):
    """Raised instead of calling sbatch; carries the script submitit wrote."""


def test_slurm_launcher_sbatch_script(tmp_path, monkeypatch):
    """The plugin's own launch() with the composed config, stopped where it would call sbatch."""
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun is here"

    def no_sbatch(self, path):
        raise _Submitted(Path(path).read_text())

    monkeypatch.setattr(SlurmExecutor, "_make_submission_command", no_sbatch)
    sweep = tmp_path / "sweep"
    cfg = _compose_hydra(["trainer=ddp", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"], sweep)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(_Submitted) as submitted:
        launcher.launch([["model.lr=0.001"], ["model.lr=0.0003"]], initial_job_idx=0)
    script = str(submitted.value)
    for line in ("#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --nodes=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --time=240",
                 "#SBATCH --partition=gpu", "#SBATCH --array=0-1%2", "#SBATCH --signal=USR2@120"):
        assert line in script.splitlines(), script
    # every task is started by srun: Lightning reads its rank from SLURM, nothing relaunches
    assert f"srun --unbuffered --output {sweep}/.submitit/%A_%a/%A_%a_%t_log.out" in script, script
    assert "submitit.core._submit" in script


def _set_env(monkeypatch, env: dict[str, str | None]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value or "x")  # recorded, so the test's end restores it
        if value is None:
            monkeypatch.delenv(key)


SRUN_RANK_2_OF_4 = {  # what srun sets for task 2 of a job with --nodes=1 --ntasks-per-node=4
    "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "1", "SLURM_PROCID": "2",
    "SLURM_LOCALID": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "123456", "SLURM_JOB_NAME": "train",
    "SLURM_NODELIST": "gpu[07-08]",
    # nothing else may claim the job (TorchElastic wins over SLURM in Lightning)
    "TORCHELASTIC_RUN_ID": None, "MASTER_ADDR": None, "MASTER_PORT": None,
    "LOCAL_RANK": None, "RANK": None, "WORLD_SIZE": None, "NODE_RANK": None,
}


@pytest.mark.parametrize("devices", [4, 2])
def test_lightning_under_srun_uses_slurm_ranks_and_launches_nothing(tmp_path, tiny_data, monkeypatch, devices):
    """trainer=ddp inside a SLURM task: ranks come from SLURM_*, no child processes;
    trainer.devices must equal --ntasks-per-node (Lightning checks it when it launches)."""
    import torch
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
    from lightning_utilities.core import rank_zero as utils_rank_zero

    from crack_lightning.trainer import build_trainer
    from crack_lightning.trainer.cluster import StopOnRequest

    _set_env(monkeypatch, SRUN_RANK_2_OF_4)
    # launch() would otherwise set torch's thread count (cores / tasks) for the rest of the session
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())))
    for holder in (fabric_rank_zero.rank_zero_only, utils_rank_zero.rank_zero_only):
        monkeypatch.setattr(holder, "rank", getattr(holder, "rank", 0))  # the Trainer sets it to 2

    cfg = compose_cfg(tmp_path, tiny_data, ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}"])
    trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    # one owner of requeueing: not Lightning's (SIGUSR1, hpc_ckpt_<n>.ckpt), see trainer/cluster.py
    assert environment.auto_requeue is False
    assert any(isinstance(cb, StopOnRequest) for cb in trainer.callbacks)
    launcher = trainer.strategy.launcher
    assert isinstance(launcher, _SubprocessScriptLauncher) and launcher.cluster_environment.creates_processes_externally
    assert trainer.strategy.cluster_environment.main_address == "gpu07"
    assert trainer.strategy.cluster_environment.main_port == 15000 + 3456
    if devices == 4:
        assert (trainer.global_rank, trainer.local_rank, trainer.world_size) == (2, 2, 4)
        assert launcher.launch(lambda: "trained", trainer=trainer) == "trained"
        assert launcher.procs == []  # no relaunch of train.py
    else:
        with pytest.raises(ValueError, match="ntasks-per-node=4"):
            launcher.launch(lambda: "trained", trainer=trainer)


POOL_UNDER_SUBMITIT = """
import os, signal, sys
from pathlib import Path
import numpy as np
# what submitit does in every job process (submitit/core/job_environment.py, _handle_signals)
signal.signal(signal.SIGTERM, lambda *_: print("a worker kept running after SIGTERM", flush=True))
from crack_lightning.data.quality.fingerprints import fingerprint_files

def probe(rgb):  # runs in the pool's worker processes
    return np.array([os.getpid(), signal.getsignal(signal.SIGTERM) == signal.SIG_DFL])

paths = sorted(Path(sys.argv[1]).rglob("*.jpg")) * 2   # >= 32 files: two worker processes
for _ in range(3):
    workers = {int(pid): bool(ok) for pid, ok in (fp.extra for fp in fingerprint_files(paths, workers=2, extra=probe))}
    assert os.getpid() not in workers, "no pool was used"
    print("workers with the default SIGTERM action:", sum(workers.values()), "of", len(workers), flush=True)
print("done")
"""


def test_process_pools_end_under_submitits_signal_handlers(tiny_data):
    """submitit sets SIGTERM to "log and ignore" in every job (local and SLURM). Forked pool
    workers inherit that; ``with Pool() as pool`` ends with ``terminate()`` (SIGTERM, then
    join), so surviving workers can hang the job for good (seen in a submitit_local sweep:
    job stuck after "Decoding 24 images once" until submitit's timeout). The workers of
    our pools must take SIGTERM's default action (die), whatever the parent set."""
    proc = subprocess.Popen([sys.executable, "-c", POOL_UNDER_SUBMITIT, str(tiny_data)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # ~2 s when the workers end; a hang never ends, so the limit only has to outlast a loaded machine
        # (30 s timed out once in a full suite under load, importing)
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stuck workers too: they ignore SIGTERM
        output, _ = proc.communicate()
        pytest.fail(f"a process pool hung under submitit's SIGTERM handler; output: {output!r}")
    assert proc.returncode == 0 and "done" in output, output
    assert output.count("workers with the default SIGTERM action: 2 of 2") == 3, output
    assert "kept running after SIGTERM" not in output


def test_submitit_local_sweep(submitit_sweeps):
    returncode, output = submitit_sweeps["mixed"].result()
    sweep = submitit_sweeps["mixed"].dir
    assert returncode == 1, output[-3000:]  # a job failed: the summary callback ends the sweep with 1
    assert "Submitit 'local' sweep output dir" in output  # the submitit launcher ran it
    assert "Traceback" not in output

    rows = _summary_rows(sweep)
    assert set(rows) == {"0", "1"}
    assert {rows["0"]["overrides"], rows["1"]["overrides"]} == {"model.lr=0.001", "model.lr=-1"}
    logs = _submitit_logs(sweep)
    assert len(logs) == 2, sorted(p.name for p in (sweep / ".submitit").iterdir())
    for job_dir in (sweep / "0", sweep / "1"):
        # Hydra's job id is submitit's job id: it names the job's log folder; each job caught
        # its own error in the submitit worker, so submitit saw both complete
        job_id = str(yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
        assert job_id in logs, (job_id, sorted(logs))
        assert "Job completed successfully" in next(logs[job_id].glob("*_log.out")).read_text()
        assert list(logs[job_id].glob("*_result.pkl"))

    # the job that trained
    row, job_dir = rows["0"], sweep / "0"
    assert row["status"] == "completed" and row["error"] == ""
    assert row["best_ckpt"] == str(job_dir / "checkpoints" / "best.ckpt") and Path(row["best_ckpt"]).is_file()
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert 0 <= metrics["test/acc"] <= 1 and float(row["test/acc"]) == pytest.approx(metrics["test/acc"], abs=1e-5)
    assert float(row["best val/loss"]) > 0 and row["epochs"] == "3"
    assert json.loads((job_dir / "job.json").read_text())["status"] == "completed"

    # the job that failed: recorded, and the other job still ran
    assert rows["1"]["status"] == "failed" and rows["1"]["error"].startswith("Bad setting: model.lr=-1")
    assert (sweep / "1" / "error.txt").read_text().startswith("Bad setting: model.lr=-1")
    assert json.loads((sweep / "1" / "job.json").read_text())["status"] == "failed"
    assert "1 failed" in (sweep / "summary.md").read_text() and (sweep / "multirun.yaml").is_file()
