"""N-class training through the real train.py on the generator's multi-class sets: the head
is sized from the data (before the images exist, on a first synthetic run), every
per-class and macro metric is logged, and the crack extras read P(any crack class)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_cfg, run_train_py

PER_CLASS = ("precision", "recall", "f1", "auroc")
MACRO = ("acc", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "macro_auroc")


def _check_metrics(metrics: dict, classes: list[str]) -> None:
    for name in classes:
        for key in PER_CLASS:
            assert 0.0 <= metrics[f"test/{key}/{name}"] <= 1.0, (key, name)
    for key in MACRO + ("recall", "recall_at_threshold", "missed_cracks", "ap"):  # crack vs the rest too
        assert f"test/{key}" in metrics, key
    assert not any(k.startswith("test/acc_at") for k in metrics)  # top-1 has no crack threshold


def test_three_classes_train_and_test_with_per_class_metrics(tmp_path):
    from crack_lightning.train import train

    root = tmp_path / "data" / "three"
    cfg = compose_cfg(tmp_path, root, [
        "backbone=custom_cnn", "data.synthetic={per_class: 14, seed: 0, size: 48, kind: multiclass, "
        "classes: [crack, stain, clean]}"])
    train(cfg)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    _check_metrics(metrics, ["clean", "crack", "stain"])
    info = json.loads((run / "splits.json").read_text())
    assert set(info["splits"]["test"]["classes"]) == {"clean", "crack", "stain"}
    point = json.loads((run / "operating_point.json").read_text())
    assert point["cracks"] == info["splits"]["val"]["classes"]["crack"]  # the threshold is fitted on crack vs rest


def test_four_classes_from_a_first_synthetic_run_of_train_py(tmp_path):
    """The real entry point, the folder not generated yet: the class list comes from the
    generator's parameters, so the head has 4 outputs before a file exists."""
    run = tmp_path / "run"
    result = run_train_py(["debug=fast", "backbone=custom_cnn", f"data.root={tmp_path / 'data' / 'four'}",
                           "data.synthetic={per_class: 12, seed: 1, size: 48, kind: multiclass}",
                           f"paths.output_dir={run}", f"paths.log_dir={tmp_path / 'logs'}",
                           f"paths.data_dir={tmp_path / 'data'}", "callbacks.error_gallery=null"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    _check_metrics(metrics, ["clean", "crack", "joint", "stain"])
    import torch

    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    model = ckpt["crack_lightning"]["config"]["model"]
    assert model["num_classes"] == 4 and model["class_names"] == ["clean", "crack", "joint", "stain"]
    assert model["positive_classes"] == [1] and ckpt["state_dict"]["head.1.weight"].shape[0] == 4


@pytest.mark.parametrize("positive", [["crack", "joint"]])
def test_several_crack_classes_sum_into_the_crack_probability(tmp_path, positive):
    from hydra.utils import instantiate

    from crack_lightning.data.labelled import data_classes

    cfg = compose_cfg(tmp_path, tmp_path / "none", [
        "backbone=custom_cnn", "data.synthetic={per_class: 4, kind: multiclass}", f"data.positive_classes=[{','.join(positive)}]"])
    classes = data_classes(cfg.data)
    assert classes["class_names"] == ["clean", "crack", "joint", "stain"] and classes["positive_classes"] == [1, 2]
    model = instantiate(cfg.model, **classes)
    import torch

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    probs = model.probabilities(logits)
    assert torch.allclose(model.crack_probability(logits), probs[:, 1] + probs[:, 2])
    assert model.is_crack(torch.tensor([0, 1, 2, 3])).tolist() == [0, 1, 1, 0]
