"""Input data is read-only, a run folder belongs to one run, and a setting typed wrong is one line.

Through the real train.py: each refusal exits 2 with one line naming the key and the way out,
and the folders involved are byte-identical afterwards (file list, sizes, hashes, link targets).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from crack_lightning import CrackLightningError
from crack_lightning.evaluation import choose_threshold, degenerate
from crack_lightning.utils.files import HOST
from tests.conftest import REPO, compose_cfg, refused, run_py, run_train_py, snapshot

FAST = ["debug=fast", "backbone=custom_cnn", "backbone.pretrained=false"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_demo_recipe_on_your_folder_trains_on_it_and_leaves_it_as_it_was(tmp_path, tiny_data):
    """Issue 14, items 1, 9 and 15: `train.py experiment=demo data.root=<your data>` used to
    delete your *.jpg and train on synthetic images. Now it trains on your folder -- here made
    of symbolic links to files elsewhere, plus a .png and a .JPG -- and changes nothing in it;
    the decoded-cache build removes the partial array a killed build left, and only that one."""
    user = tmp_path / "my_photos"
    for cls in ("Positive", "Negative"):
        (user / cls).mkdir(parents=True)
        for image in sorted((tiny_data / cls).glob("*.jpg")):
            (user / cls / image.name).symlink_to(image)
    shutil.copy(tiny_data / "Negative" / "00001.jpg", user / "Negative" / "IMG_0001.JPG")
    from PIL import Image

    Image.open(tiny_data / "Positive" / "00001.jpg").save(user / "Positive" / "site_a.png")
    cache = tmp_path / "data" / "cache"
    cache.mkdir(parents=True)
    stale = cache / f".decoded-32x32-0123.{HOST}-{_dead_pid()}.partial.npy"  # a SIGKILLed build's
    alive = cache / f".decoded-32x32-4567.{HOST}-{os.getpid()}.partial.npy"  # a build still running
    for partial in (stale, alive):
        partial.write_bytes(b"\0" * 1024)
    before = snapshot(user)

    result = run_train_py(["experiment=demo", *FAST, "trainer.max_epochs=2", f"data.root={user}",
                           f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'outputs'}"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert snapshot(user) == before
    assert "did not write: training on it as it is" in output
    [run] = (tmp_path / "outputs" / "demo" / "runs").iterdir()
    with open(run / "splits.csv", newline="") as f:
        listed = {row["path"] for row in csv.DictReader(f)}
    assert listed == {rel for rel, entry in before.items() if entry[0] != "dir"}, "every image of yours, links too"
    assert "ckpt_path" not in output, "a fresh run looks for no checkpoint to restore"
    assert not stale.exists() and alive.exists()
    assert isinstance(json.loads((run / "operating_point.json").read_text())["warnings"], list)

    # the generator's own command refuses your folder, in one line
    gen = subprocess.run([sys.executable, "-m", "crack_lightning.cli.synth", "--out", str(user)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert gen.returncode == 2 and "did not write" in gen.stderr and len(gen.stderr.splitlines()) == 1, gen.stderr
    assert snapshot(user) == before


def test_used_folders_and_folders_inside_the_data_are_refused_before_anything_is_written(
        tmp_path, tiny_data, trained_run):
    """Items 2, 6 and 11: a new run in a finished run's folder restored its last.ckpt and cut its
    logs; hydra.run.dir=<data.root> wrote csv/ and tensorboard/ into the dataset; an unwritable
    cache folder was a trace after the data was read."""
    data_before, run_before = snapshot(tiny_data), snapshot(trained_run)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    for args, words in (
        ([f"hydra.run.dir={trained_run}", "model.lr=0.01"], ("hydra.run.dir=", "holds", "resume=")),
        ([f"hydra.run.dir={tiny_data}"], ("hydra.run.dir=", "holds")),
        ([f"hydra.run.dir={tiny_data / 'runs' / 'new'}"], ("lies inside data.root=",)),
        ([f"data.cache.dir={tiny_data / 'cache'}"], ("data.cache.dir=", "lies inside data.root=")),
        ([f"data.cache.dir={a_file / 'cache'}"], ("data.cache.dir=", "cannot write")),
        ([f"resume={tmp_path / 'no_such_run'}"], ("resume=", "not a train.py run folder")),  # Hydra made it
        ([f"resume={tiny_data}"], ("resume=", "not a train.py run folder")),
    ):
        refused(run_train_py([*FAST, f"data.root={tiny_data}", f"paths.log_dir={tmp_path}", *args]), *words)
    assert snapshot(tiny_data) == data_before and snapshot(trained_run) == run_before
    assert not (tmp_path / "train").exists() and not (tmp_path / "no_such_run").exists(), "no folder was even created"

    # ckpt_path= of a file that is no checkpoint: one line, not Lightning's trace from inside fit
    from crack_lightning.resume import resume_point

    with pytest.raises(CrackLightningError, match=r"ckpt_path=.*a_file: not a PyTorch checkpoint \(a text file\)"):
        resume_point(compose_cfg(tmp_path, tiny_data, [f"ckpt_path={a_file}"]))


def test_two_runs_started_together_get_a_folder_each(tmp_path, tiny_data):
    """Item 3: run folders were named to the second; two runs started together shared one."""
    args = [sys.executable, str(REPO / "train.py"), *FAST, f"data.root={tiny_data}", f"paths.log_dir={tmp_path}"]
    procs = [subprocess.Popen([*args, f"model.lr={lr}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for lr in ("abc", "xyz")]  # refused by the config check, after Hydra made the folder
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == 2
    runs = sorted((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 2
    logged = [(run / "train.log").read_text() for run in runs]
    assert sorted("model.lr='abc'" in log for log in logged) == [False, True], "each folder holds its own run"
    assert sorted("model.lr='xyz'" in log for log in logged) == [False, True]


def test_hydra_and_config_refusals_are_one_line_exit_2(tmp_path, tiny_data):
    """Item 12 (and 11, 14): Hydra's multi-line errors, exit 1, became one line and exit 2; the
    settings a user may type wrong are refused before data is read."""
    base = [*FAST, f"data.root={tiny_data}", f"paths.log_dir={tmp_path}"]
    cases = [
        (["backbone=mobilnetv2"], ("backbone=mobilnetv2", "custom_cnn, efficientnet, mobilenetv2, timm")),
        (["model.lrr=1"], ("model.lrr", "--cfg job")),
        (["finetune.unfreeze_stages=0"], ("finetune.unfreeze_stages=0",)),
        (["data.loader.num_workers=abc"], ("data.loader.num_workers=abc", "auto or a whole number")),
        (["++trainer.limit_val_batches=0"], ("trainer.limit_val_batches=0", "needs validation")),
        (["data.positive_classes=裂缝"], ("non-ASCII", "\"data.positive_classes='裂缝'\"")),
        (["data.positive_class=Positive"], ("data.positive_class", "data.positive_classes=Positive")),
    ]
    if not torch.cuda.is_available():
        cases.append((["trainer=gpu"], ("no CUDA GPU", "trainer=cpu")))
    for args, words in cases:
        refused(run_train_py([*base, *args]), *words)
    line = refused(run_py("predict.py", ["ckpt=x.ckpt", "input=/x/照片"]), "non-ASCII")
    assert "\"input='/x/照片'\"" in line
    quoted = run_train_py([*base, "data.positive_classes='裂缝'", "--cfg", "job"])  # the advice composes
    assert quoted.returncode == 0 and "positive_classes: 裂缝" in quoted.stdout


def test_ctrl_c_before_training_is_one_line_and_143(tmp_path, tiny_data):
    """Item 12: a Ctrl+C while the run starts (here: importing Lightning) exited 1 with a trace."""
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *FAST, f"data.root={tiny_data}",
                             f"paths.log_dir={tmp_path}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "train" / "runs").glob("*/train.log")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the task has started: Hydra wrote the run folder
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in out + err and "Interrupted" in err


def test_ctrl_c_while_the_data_is_prepared_saves_nothing_and_says_so(tmp_path, tiny_data, monkeypatch):
    """Inside fit, before training: Lightning turned the Ctrl+C into exit(1), and the interrupt
    callback saved an untrained interrupted.ckpt for resume= to pick."""
    from crack_lightning.data.datamodule import CrackDataModule
    from crack_lightning.train import train

    def ctrl_c(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(CrackDataModule, "prepare_data", ctrl_c)
    with pytest.raises(KeyboardInterrupt):  # cli.run: one line, status 143
        train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn"]))
    assert not list((tmp_path / "run").rglob("*.ckpt"))


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_ctrl_c_after_fit_is_the_commands_interrupt_too(tmp_path, tiny_data, monkeypatch, stage):
    """The operating point's validate and the test after fit: Lightning ended a Ctrl+C there with
    its own message and exit(1), not the command's one line and 143."""
    from lightning.pytorch.trainer.states import TrainerFn

    from crack_lightning.callbacks import OperatingPoint
    from crack_lightning.train import train

    hook = "on_validation_start" if stage == "validate" else "on_test_start"

    def ctrl_c(self, trainer, pl_module):
        if trainer.state.fn == TrainerFn(stage):
            raise KeyboardInterrupt

    monkeypatch.setattr(OperatingPoint, hook, ctrl_c, raising=False)
    with pytest.raises(KeyboardInterrupt):  # cli.run: one line, status 143
        train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn"]))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_splits_that_cannot_support_the_metrics_are_refused(tmp_path, tiny_data):
    """Item 8: one crack image trained, chose a 'recall >= 0.99' threshold on a validation
    split without cracks and reported test AUROC 0.0 (undefined), exit 0."""
    root = tmp_path / "one_crack"
    shutil.copytree(tiny_data, root)
    for extra in sorted((root / "Positive").glob("*.jpg"))[1:]:
        extra.unlink()
    refused(run_train_py([*FAST, f"data.root={root}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}"]),
            "split has no 'Positive' image (usable images per class: Negative 12, Positive 1)")
    [run] = (tmp_path / "train" / "runs").iterdir()
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists(), "refused before training"


def test_more_unfreeze_stages_than_the_backbone_has_are_refused(tmp_path, tiny_data):
    """Item 10: finetune.unfreeze_stages=99 was accepted and unfroze the whole backbone."""
    refused(run_train_py([*FAST, f"data.root={tiny_data}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}",
                          "finetune.unfreeze_stages=99"]), "finetune.unfreeze_stages=99: this backbone has", "stages")


def test_a_degenerate_operating_point_is_called_so():
    """Item 10: a model that ranks nothing got threshold 0 (everything a crack) and the clamped
    temperature 20 without a word."""
    targets = torch.tensor([0, 0, 1, 1])
    flat = torch.tensor([0.5, 0.5, 0.5, 0.5])
    problems = degenerate(20.0, choose_threshold(flat, targets, 0.5), flat, targets)
    assert len(problems) == 2 and "temperature hit its limit 20" in problems[0]
    assert "flags every validation image as a crack" in problems[1]
    good = torch.tensor([0.1, 0.2, 0.8, 0.9])
    assert degenerate(1.3, choose_threshold(good, targets, 0.5), good, targets) == []
