"""Freeze-then-unfreeze under DDP: the unfrozen backbone stays in sync across ranks.

Two CPU processes (gloo) see different halves of the data. If DDP did not reduce the
backbone's gradients after the unfreeze (Lightning issue 20340), the ranks' backbones
would drift apart: FinetuneDDPStrategy all-gathers a checksum of the weights at the end
of training (checked through the real train.py below), and the negative control shows
plain DDP failing the same check.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from crack_lightning.callbacks import FreezeUnfreeze
from crack_lightning.inference import load_classifier
from tests.conftest import run_train_py
from tests.test_finetune import make_data, make_model


class SyncProbe(L.Callback):
    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.backbone.parameters()])
        checksums = pl_module.all_gather(torch.stack([flat.sum(), (flat * flat).sum()]))
        unfrozen = all(p.requires_grad for p in pl_module.backbone.parameters())
        if trainer.is_global_zero:
            # raised in rank 0, reported back to the test by the launcher
            assert unfrozen, "backbone not unfrozen"
            assert torch.allclose(checksums[0], checksums[1], rtol=0, atol=0), f"ranks diverged: {checksums}"


def fit_ddp(strategy, tiny_data, tmp_path):
    model = make_model("custom_cnn")
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=False, default_root_dir=tmp_path,
        callbacks=[FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=1.0), SyncProbe()],
    )
    trainer.fit(model, make_data(model, tiny_data, tmp_path))


def test_plain_ddp_would_let_ranks_diverge(tiny_data, tmp_path):
    """The reason FinetuneDDPStrategy exists; if this stops failing, the workaround can go."""
    with pytest.raises(Exception, match="ranks diverged"):  # forked ranks: spawn re-imported torch and Lightning, 12 s
        fit_ddp(DDPStrategy(start_method="fork", process_group_backend="gloo", find_unused_parameters=True), tiny_data, tmp_path)


def test_train_py_ddp_cpu_sweep(tiny_data, tmp_path):
    """`python train.py -m trainer=ddp_cpu ...`, two jobs. Lightning relaunches train.py
    for rank 1; here that process runs its job alone (not the sweep again) in the job's
    folder, and the second job gets fresh processes, not the first job's closed process
    group. In each job both ranks unfreeze at the same epoch and end with identical
    weights, and the test metrics and report cover each test image once."""
    logs = tmp_path / "logs"
    result = run_train_py([
        "-m", "trainer=ddp_cpu", "debug=fast", "backbone=custom_cnn", "backbone.pretrained=false",
        "callbacks.error_gallery=null", "callbacks.augmentation_preview=null",
        f"data.root={tiny_data}", "data.split.strategy=random",  # 19/2/3: an odd test split
        f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={logs}", "model.lr=1e-3,3e-4",
    ])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    [sweep] = (logs / "train" / "multiruns").iterdir()
    assert not (logs / "train" / "runs").exists()  # no rank started a run of its own
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [job.name for job in jobs] == ["0", "1"]
    with open(sweep / "summary.csv", newline="") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["completed", "completed"]

    for run in jobs:  # one job, one folder, both ranks' logs in it
        assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_rank1.log"]
        assert (run / ".hydra" / "config.yaml").is_file()  # written by rank 0 only
        rank_logs = [(run / name).read_text() for name in ("train.log", "train_rank1.log")]
        for rank, text in enumerate(rank_logs):
            assert re.search(r"Epoch 2: unfroze \d+ backbone parameter tensors", text), f"rank {rank} did not unfreeze"
        trainable = [re.search(rf"Rank {rank}: (\d+) trainable parameters.*checksum (\S+)", text).groups()
                     for rank, text in enumerate(rank_logs)]
        total = sum(p.numel() for p in load_classifier(run / "checkpoints" / "best.ckpt").model.parameters())
        assert trainable[0] == trainable[1] and int(trainable[0][0]) == total  # backbone and head training, in step
        assert "All 2 ranks hold identical weights after training." in rank_logs[0]

        with open(run / "splits.csv", newline="") as f:
            test_rows = [row for row in csv.DictReader(f) if row["split"] == "test"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert len(test_rows) == 3 and metrics["test/images"] == 3  # the sampler would pad to 4
        cracks = sum(row["label"] == "Positive" for row in test_rows)
        assert (run / "classification_report.txt").read_text().startswith(f"Test split, 3 images ({cracks} cracks)")
        assert json.loads((run / "operating_point.json").read_text())["images"] == 2  # the whole val split, once


def test_ddp_run_killed_after_the_unfreeze_resumes_unfrozen_in_step(tmp_path):
    """A 2-rank ``trainer=ddp_cpu`` run SIGKILLed (both ranks) mid-epoch after the unfreeze, then
    ``resume=``: both ranks continue unfrozen from the mid-epoch checkpoint, finish the epoch (not
    repeat it) and end with identical weights. (That the weights are those of a run never killed
    is tests/test_resume.py's, in one process: a second DDP run here would cost the suite ~15 s.)"""
    from tests.test_resume import command, hold, load, start_train_py, wait_for
    from crack_lightning.data.synthetic.generate import generate

    data = tmp_path / "images"
    generate(data, per_class=40, seed=0)  # 64 training images: 32 per rank, 8 steps of 4 per epoch
    base = [*command(data, tmp_path), "trainer=ddp_cpu", "callbacks.step_checkpoint.every_n_train_steps=10"]
    run, marker = tmp_path / "killed", tmp_path / "held"
    held = hold(marker, at_step=20)  # epoch 2 is steps 16-23
    killed = start_train_py([*base, *held, f"hydra.run.dir={run}"], new_session=True)
    wait_for(marker, killed)
    os.killpg(killed.pid, signal.SIGKILL)  # rank 0 and the rank-1 process it started
    killed.wait()
    step = load(run / "checkpoints" / "step.ckpt")
    assert step["global_step"] == 20 and step["CrackDataModule"]["train_order"] == {"epoch": 2, "batches": 4}

    resumed = run_train_py([*base, *held, f"resume={run}"])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    logs = [(run / name).read_text() for name in ("train.log", "train_rank1.log")]
    total = sum(p.numel() for p in load_classifier(run / "checkpoints" / "best.ckpt").model.parameters())
    resumed_part = [text[text.rindex("Resuming"):] if rank == 0 else text for rank, text in enumerate(logs)]
    ends = [re.findall(rf"Rank {rank}: (\d+) trainable parameters.*checksum (\S+)", text)[-1]
            for rank, text in enumerate(resumed_part)]
    assert ends[0] == ends[1] and int(ends[0][0]) == total, "both ranks unfrozen and in step after the resume"
    assert "All 2 ranks hold identical weights after training." in resumed_part[0]
    last = load(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 24, "the interrupted epoch is finished, not repeated"
    assert [g.get("name") for g in last["optimizer_states"][0]["param_groups"]][1:] == ["backbone"]
