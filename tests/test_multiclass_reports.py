"""What reports a run follows the number of classes (issue 16): a real `train.py -m` over a tiny
three-class ImageFolder (clean / crack / stain) writes per-class metrics, a 3 x 3 confusion
matrix, a report of every class, and a sweep summary with macro-F1."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
from PIL import Image

from crack_lightning.callbacks.figures import crack_sides
from crack_lightning.reports.plots import confusion_matrix_figure, confusion_table
from tests.conftest import run_train_py

CLASSES = ("clean", "crack", "stain")


def three_classes(root, per_class: int = 12, size: int = 40):
    """An ImageFolder of three classes, each its own tint plus noise."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            tint = np.array([60 + 70 * k, 120, 200 - 70 * k])
            pixels = np.clip(tint + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_three_class_run_folders_and_sweep_summary(tmp_path):
    data = three_classes(tmp_path / "three")
    sweep = tmp_path / "sweep"
    result = run_train_py(["-m", "debug=fast", "backbone=custom_cnn", "backbone.pretrained=false",
                           "model.lr=1e-3,3e-3", "trainer.max_epochs=1", "finetune=full", f"data.root={data}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run = sweep / "0"

    metrics = json.loads((run / "metrics.json").read_text())
    for name in CLASSES:
        assert {f"test/{m}/{name}" for m in ("precision", "recall", "f1", "auroc")} <= set(metrics)
    assert {"test/acc", "test/macro_f1", "test/weighted_f1", "test/macro_auroc", "test/f1",
            "test/missed_cracks_at_threshold"} <= set(metrics)

    # the matrix at the most probable class: every test image once, rows = true class
    with open(run / "confusion_matrix.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header[1:] == list(CLASSES) and [r[0] for r in rows] == list(CLASSES)
    assert sum(int(c) for r in rows for c in r[1:]) == metrics["test/images"]
    assert (run / "confusion_matrix.png").is_file() and (run / "pr_roc_curves.png").is_file()

    text = (run / "classification_report.txt").read_text()
    assert text.startswith(f"Test split, {int(metrics['test/images'])} images") and "crack class = crack" in text
    assert all(name in text for name in CLASSES) and "macro avg" in text and "weighted avg" in text
    assert "clean + stain" in text and "missed cracks" in text  # and cracks vs the rest

    report = (run / "report.md").read_text()
    assert "### Every class" in report and "| macro average |" in report and "| weighted average |" in report
    assert all(f"| {name} |" in report for name in CLASSES)
    assert "test/macro_f1 (F1 averaged over the classes)" in report and "[confusion_matrix.csv]" in report

    md = (sweep / "summary.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| rank"))
    assert "| macro_f1 |" in head and "| f1 |" in head
    with open(sweep / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 and all(0 <= float(r["test/macro_f1"]) <= 1 for r in summary)


def test_confusion_matrix_follows_the_classes():
    targets, preds = [0, 1, 2, 2, 1], [0, 2, 2, 1, 1]
    fig = confusion_matrix_figure(targets, preds, list(CLASSES))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(CLASSES)
    assert tuple(fig.get_size_inches()) > (4.5, 4)  # room for more classes
    assert tuple(confusion_matrix_figure([0, 1], [1, 1], ["no", "yes"]).get_size_inches()) == (4.5, 4)
    assert confusion_table(targets, preds, list(CLASSES))[1:] == [
        ["clean", "1", "0", "0"], ["crack", "0", "1", "1"], ["stain", "0", "1", "1"]]
    assert crack_sides(list(CLASSES), torch.tensor([False, True, False])) == ["clean + stain", "crack"]
    assert crack_sides(["Negative", "Positive"], torch.tensor([False, True])) == ["Negative", "Positive"]
