"""Crash and resume through the real train.py: SIGKILL mid-epoch after the unfreeze, then
``resume=<run folder>``; SIGTERM saves a checkpoint and exits cleanly; atomic checkpoint writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crack_lightning import CrackLightningError
from crack_lightning.data.synthetic.generate import generate
from crack_lightning.resume import newest_checkpoint, resume_point
from crack_lightning.trainer.checkpoint_io import AtomicCheckpointIO
from tests.conftest import REPO, child_env, compose_cfg, run_train_py

EPOCHS, STEPS_PER_EPOCH = 3, 16  # 64 training images (40 per class, 80/10/10 split), batch 4
HOLD_AT = 40                     # a global step inside epoch 2 (steps 32-47), after the unfreeze at epoch 1


class Hold(L.Callback):
    """Test hook, added with +callbacks.hold: at ``at_step`` of a fresh (not resumed) fit,
    write ``marker`` and wait to be killed; a SIGTERM lets the batch run (Lightning then stops)."""

    def __init__(self, at_step: int, marker: str):
        self.at_step, self.marker = at_step, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.ckpt_path is None and trainer.global_step == self.at_step:
            self.marker.write_text(str(trainer.global_step))
            deadline = time.monotonic() + 120
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_data")
    generate(root, per_class=40, seed=0)
    return root


def command(data: Path, tmp: Path) -> list[str]:
    return [
        "debug=fast", "backbone=custom_cnn", "backbone.pretrained=false", f"data.root={data}",
        f"paths.data_dir={tmp / 'data'}", "data.loader.batch_size=4", f"trainer.max_epochs={EPOCHS}",
        "finetune.unfreeze_at_epoch=1", "callbacks.step_checkpoint.every_n_train_steps=20",
        "callbacks.error_gallery=null", "callbacks.augmentation_preview=null", "callbacks.test_report=null",
        "trainer.deterministic=true",
    ]


def start_train_py(args: list[str], new_session: bool = False) -> subprocess.Popen:
    """train.py in the background; ``new_session``: with the processes it starts (DDP ranks) in a
    process group of its own, to kill them all at once."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=new_session,
    )


def hold(marker: Path, at_step: int = HOLD_AT) -> list[str]:
    return ["+callbacks.hold._target_=tests.test_resume.Hold", f"+callbacks.hold.at_step={at_step}", f"+callbacks.hold.marker={marker}"]


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"train.py ended before the marker:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("train.py did not reach the marker")
        time.sleep(0.05)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigkill_mid_epoch_after_unfreeze_then_resume(data, tmp_path):
    base = command(data, tmp_path)
    killed_run, full_run, marker = tmp_path / "killed", tmp_path / "full", tmp_path / "held"
    # the uninterrupted reference runs alongside the one that is killed
    full = start_train_py([*base, f"hydra.run.dir={full_run}"])
    killed = start_train_py([*base, *hold(marker), f"hydra.run.dir={killed_run}"])
    wait_for(marker, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    ckpt = newest_checkpoint(killed_run / "checkpoints", exclude="best.ckpt")
    state = load(ckpt)
    assert ckpt.name == "step.ckpt" and state["global_step"] == HOLD_AT, "a mid-epoch checkpoint of epoch 2"
    assert load(killed_run / "checkpoints" / "last.ckpt")["epoch"] == 1

    resumed = run_train_py([*base, *hold(marker), f"resume={killed_run}"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert full.wait(timeout=120) == 0, full.stdout.read()[-3000:]

    last = load(killed_run / "checkpoints" / "last.ckpt")  # complete: weights_only loading succeeds
    assert last["epoch"] == EPOCHS - 1
    assert last["global_step"] == EPOCHS * STEPS_PER_EPOCH, "the interrupted epoch is finished, not repeated"
    groups = last["optimizer_states"][0]["param_groups"]
    assert [g.get("name") for g in groups][1:] == ["backbone"], "the backbone is still being trained"
    assert not (killed_run / "checkpoints" / "interrupted.ckpt").exists()

    # trainable parameters per epoch, from the run's CSV log (appended to on resume)
    rows = (killed_run / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    trainable = {
        int(float(r.split(",")[header.index("epoch")])): float(r.split(",")[header.index("train/trainable_params")])
        for r in rows[1:] if r.split(",")[header.index("train/trainable_params")]
    }
    assert sorted(trainable) == list(range(EPOCHS))
    assert trainable[0] < trainable[1] == trainable[2], "unfrozen from epoch 1 on, after the resume too"

    # one TensorBoard run, continued in place: each epoch's val/loss once
    acc = EventAccumulator(str(killed_run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(list((killed_run / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    steps = [e.step for e in acc.Scalars("val/loss")]  # each epoch's, then the operating point's validation
    assert steps[:EPOCHS] == [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)] and len(steps) == EPOCHS + 1

    # the resumed run's first start is kept in .hydra/, its own config beside it
    assert (killed_run / ".hydra" / "config.yaml").is_file()
    assert list((killed_run / ".hydra").glob("resumed_*/config.yaml"))

    # exact: the interrupted epoch's remaining batches in the same order, the same augmentation and
    # dropout draws (ExactResume), so the same weights, bit for bit, and the same test metrics
    reference = load(full_run / "checkpoints" / "last.ckpt")
    assert reference["global_step"] == last["global_step"]
    differ = [k for k, v in reference["state_dict"].items() if not torch.equal(v, last["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(reference['state_dict'])} tensors differ from the uninterrupted run's"
    got = json.loads((killed_run / "metrics.json").read_text())
    want = json.loads((full_run / "metrics.json").read_text())
    assert {k: got[k] for k in want if k.startswith("test/")} == {k: want[k] for k in want if k.startswith("test/")}


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "held"
    proc = start_train_py([*command(data, tmp_path), *hold(marker), f"hydra.run.dir={run}"])
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output
    assert f"Interrupted at epoch 2, step {HOLD_AT + 1}" in output and f"resume={run}" in output
    saved = load(run / "checkpoints" / "interrupted.ckpt")
    assert saved["global_step"] == HOLD_AT + 1, "the batch in progress completes before the save"
    assert not (run / "metrics.json").exists()


def test_resume_without_checkpoint_or_with_another_config_is_one_clear_line(data, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CrackLightningError, match="no checkpoint in"):
        newest_checkpoint(run / "checkpoints")
    # the run's first start saved its config; resuming with another learning rate is refused
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg(tmp_path, data, ["backbone=custom_cnn"])))
    (run / ".hydra" / "overrides.yaml").write_text("- backbone=custom_cnn\n")
    other = compose_cfg(tmp_path, data, ["backbone=custom_cnn", "model.lr=0.5", f"resume={run}"])
    with pytest.raises(CrackLightningError, match=r"model.lr: 0.0001 -> 0.5.*python train.py backbone=custom_cnn resume="):
        resume_point(other)


def test_atomic_checkpoint_io_leaves_the_old_file_when_a_save_fails(tmp_path):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, target)
    with pytest.raises(Exception):
        io.save_checkpoint({"global_step": 2, "bad": lambda: None}, target)  # unpicklable
    assert load(target) == {"global_step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file is left"
