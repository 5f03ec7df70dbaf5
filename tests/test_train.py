"""The training task end to end: in-process for each backbone, and the real train.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crack_lightning.train import train
from tests.conftest import compose_cfg, run_train_py

METRIC_KEYS = {
    "test/acc", "test/precision", "test/recall", "test/f1", "test/auroc", "test/ap", "test/loss", "best_ckpt",
    "test/acc_at_threshold", "test/precision_at_threshold", "test/recall_at_threshold", "test/f1_at_threshold",
    "test/threshold", "test/missed_cracks", "test/missed_cracks_at_threshold", "test/images", "test/ece",
}
COUNT_KEYS = {"best_ckpt", "test/loss", "test/missed_cracks", "test/missed_cracks_at_threshold", "test/images"}
# 95 % intervals (callbacks/intervals.py); an undefined one (precision with no crack called) is not logged
CI_KEYS = {f"test/{m}{s}_ci_{end}" for m in ("precision", "recall", "f1", "missed_cracks") for s in ("", "_at_threshold")
           for end in ("low", "high")} | {f"test/{m}_ci_{end}" for m in ("acc", "auroc", "ece") for end in ("low", "high")}
RUN_FILES = [
    "metrics.json", "classification_report.txt", "confusion_matrix.png", "test_predictions.png",
    "augmentation_preview.png", "splits.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
    "operating_point.json", "pr_roc_curves.png", "reliability_diagram.png", "gradcam.png",
]


def check_run_folder(run: Path) -> dict:
    for name in RUN_FILES:
        assert (run / name).is_file(), f"{name} missing from the run folder"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) - CI_KEYS == METRIC_KEYS and {"test/recall_ci_low", "test/auroc_ci_high"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in METRIC_KEYS - COUNT_KEYS)
    assert Path(metrics["best_ckpt"]).is_file()
    with open(run / "splits.csv", newline="") as f:
        test_images = sum(row["split"] == "test" for row in csv.DictReader(f))
    assert metrics["test/images"] == test_images  # every test image scored once
    report = (run / "classification_report.txt").read_text()
    assert report.startswith(f"Test split, {test_images} images")
    assert "Positive" in report and "Negative" in report and "support" in report
    return metrics


@pytest.fixture(scope="module")
def custom_cnn_run(trained_run_result):
    return trained_run_result  # the shared tiny custom_cnn run of conftest.py


@pytest.mark.parametrize("backbone", ["mobilenetv2", "efficientnet", "timm"])
def test_fit_and_test_each_backbone(backbone, tmp_path, tiny_data):
    extra = ["backbone.name=resnet18"] if backbone == "timm" else []
    best = train(compose_cfg(tmp_path, tiny_data, [f"backbone={backbone}", *extra]))
    check_run_folder(tmp_path / "run")
    assert best is not None and best > 0  # the best val/loss, returned for sweepers


def test_custom_cnn_run_folder_and_return_value(custom_cnn_run):
    run, best = custom_cnn_run
    check_run_folder(run)
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("val/loss")]) for r in rows[1:] if r.split(",")[header.index("val/loss")]]
    assert best == pytest.approx(min(losses))


def test_tensorboard_has_scalars_figures_and_hparams(custom_cnn_run):
    run, _ = custom_cnn_run
    tags = {"scalars": set(), "images": set(), "tensors": set()}
    for event_file in (run / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
        try:
            tags["tensors"] |= set(acc.PluginTagToContent("hparams"))
        except KeyError:  # this event file holds no hparams summary
            pass
    assert {
        "val/loss", "val/recall", "val/auroc", "train/loss_step", "train/trainable_params", "test/acc",
        "test/recall_at_threshold", "calibration/temperature", "calibration/threshold", "train/images_per_sec",
    } <= tags["scalars"]
    assert {
        "train/augmentation_preview", "test/confusion_matrix", "test/predictions", "test/pr_roc_curves",
        "test/reliability_diagram", "test/gradcam",
    } <= tags["images"]
    assert "_hparams_/session_start_info" in tags["tensors"]  # hyperparameters logged with metrics


def test_same_seed_gives_the_same_metrics(custom_cnn_run, tmp_path, tiny_data):
    run, _ = custom_cnn_run
    train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn"]))
    first = json.loads((run / "metrics.json").read_text())
    second = json.loads((tmp_path / "run" / "metrics.json").read_text())
    first.pop("best_ckpt"), second.pop("best_ckpt")
    assert first == second


def test_train_py_user_error_is_one_clear_line(tmp_path, tiny_data):
    result = run_train_py([
        "debug=fast", "backbone=timm", "backbone.name=mobilenet_v2", f"data.root={tiny_data}",
        f"paths.log_dir={tmp_path}",  # Hydra's own run folder under it (no hydra.run.dir)
    ])
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Unknown backbone 'mobilenet_v2'" in output and "mobilenetv2_100" in output
    assert "Traceback" not in output
    assert len(list((tmp_path / "train" / "runs").iterdir())) == 1


def test_compiled_backbone_trains_and_saves_an_eager_checkpoint(tmp_path, tiny_data):
    """trainer.compile=true through the real task (dynamo's eager backend here: it traces
    the same graphs as inductor without minutes of C++ code generation on this CPU)."""
    import torch
    import torch._dynamo.utils as dynamo_utils

    from crack_lightning.inference import load_classifier

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    try:
        train(compose_cfg(tmp_path, tiny_data, [
            "backbone=custom_cnn", "trainer.compile=true", "+trainer.compile_options.backend=eager",
        ]))
        graphs = dynamo_utils.counters["stats"]["unique_graphs"]
        breaks = dict(dynamo_utils.counters["graph_break"])
    finally:
        torch._dynamo.reset()
    check_run_folder(tmp_path / "run")
    assert graphs > 0, "the backbone was not compiled"
    assert not breaks, f"graph breaks in the backbone: {breaks}"
    # checkpoints hold the eager model's keys: predict/export load them without compiling
    loaded = load_classifier(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert not any("_orig_mod" in key for key in loaded.model.state_dict())


def test_inference_compile_serves_only_the_calls_without_gradient(tmp_path, tiny_data):
    """trainer.compile=inference: the frozen phase and evaluation go through the compiled
    backbone, training after the unfreeze through the eager one (no backward graph to
    compile); the state dict stays the eager model's."""
    import torch
    from hydra.utils import instantiate

    from crack_lightning.trainer import compile_if_asked

    cfg = compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn", "trainer.compile=inference",
                                            "+trainer.compile_options.backend=eager"])
    model = instantiate(cfg.model)
    keys = set(model.state_dict())
    torch._dynamo.reset()
    try:
        compile_if_asked(cfg.trainer, model)
        assert set(model.state_dict()) == keys
        compiled, calls = model.__dict__["_compiled_without_grad"], []
        model.__dict__["_compiled_without_grad"] = lambda x: calls.append(len(x)) or compiled(x)
        x = torch.randn(4, 3, 32, 32)

        model.backbone.requires_grad_(False).eval()  # frozen phase (FreezeUnfreeze: BN statistics fixed)
        model(x).sum().backward()  # the head still trains
        assert len(calls) == 1 and all(p.grad is None for p in model.backbone.parameters())
        model.backbone.requires_grad_(True)  # after the unfreeze: eager, with gradients
        model(x).sum().backward()
        assert len(calls) == 1 and all(p.grad is not None for p in model.backbone.parameters())
        with torch.no_grad():
            model(x)
        with torch.inference_mode():  # Lightning's evaluation
            model(x)
        assert len(calls) == 3
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model.backbone(x))
        # a backbone that is no nn.Sequential (compiled modules refuse len(), so bool())
        mobilenet = instantiate(compose_cfg(tmp_path, tiny_data, ["backbone=mobilenetv2"]).model)
        compile_if_asked(cfg.trainer, mobilenet)  # lazy: nothing is traced until called
        assert mobilenet._backbone_without_grad() is mobilenet.__dict__["_compiled_without_grad"]
    finally:
        torch._dynamo.reset()
