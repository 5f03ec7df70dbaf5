"""What a run prints into a pipe (make demo | tee, nohup, CI, SLURM): no message the user cannot
act on, and one readable line per epoch, on the console and in train.log."""

from __future__ import annotations

import re

import pytest
from lightning.pytorch.callbacks import RichProgressBar

from crack_lightning import CrackLightningError
from crack_lightning.callbacks.progress import EpochLog, progress_bar
from tests.conftest import run_train_py

# what Lightning 2.6 / torch 2.15 printed into every log, none of it actionable by our users
NOISE = {
    "litlogger tip": "litlogger",
    "litmodels tip": "litmodels",
    "torch pytree deprecation": "LeafSpec",
    # the seed line is logged by crack_lightning/train.py before build_trainer quiets Lightning
    "every Lightning line twice (its own 'INFO: ' handler)": re.compile(r"^INFO: ", re.M),
}
# one line holding the epoch's training and validation metrics with their numbers
EPOCH_LINE = re.compile(r"Epoch 1/1 \(\d+ s\): train/loss \d\.\d+ · val/loss \d\.\d+ · val/acc \d\.\d+")


def test_a_run_into_a_pipe_prints_what_matters(tmp_path, tiny_data):
    run = tmp_path / "run"
    result = run_train_py([
        "debug=fast", "backbone=custom_cnn", "backbone.pretrained=false", f"data.root={tiny_data}",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}", "trainer.max_epochs=2", "finetune=frozen",
        "callbacks.progress_bar.live=auto",  # the default's choice for a pipe, not debug=fast's
        "callbacks.error_gallery=null", "callbacks.augmentation_preview=null", "callbacks.test_report=null",
    ])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for what, pattern in NOISE.items():
        found = pattern.search(output) if isinstance(pattern, re.Pattern) else pattern in output
        assert not found, f"{what} in the output:\n{output[-3000:]}"
    for name, text in (("console", result.stdout), ("train.log", (run / "train.log").read_text())):
        lines = [line for line in text.splitlines() if EPOCH_LINE.search(line)]
        assert len(lines) == 1, f"no readable epoch line in the {name}:\n{text[-3000:]}"
    assert "━━" not in output, "a live progress bar in a pipe"


def test_progress_bar_is_live_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert isinstance(progress_bar(), RichProgressBar)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert isinstance(progress_bar(), EpochLog)
    assert isinstance(progress_bar(live=True), RichProgressBar)
    with pytest.raises(CrackLightningError, match="callbacks.progress_bar.live"):
        progress_bar(live="yes")
