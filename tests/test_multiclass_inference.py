"""More than two classes after training: predict.py's per-class columns, the ONNX export and its
card, Grad-CAM of the predicted class, and two-class files that read as before.

One tiny 3-class run (``clean``, ``crack``, ``stain``; 40 px PNGs) through the real train().
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.evaluation.gradcam import gradcam
from crack_lightning.export.run import export
from crack_lightning.inference.backends import TorchBackend
from crack_lightning.inference.checkpoint import load_classifier
from crack_lightning.inference.onnx_backend import OnnxBackend
from crack_lightning.inference.predict import COLUMNS, columns, predict
from crack_lightning.inference.sources import find_inputs
from crack_lightning.model_card import ModelCard, Preprocessing
from tests.conftest import compose_cfg, run_py
from tests.test_export import export_cfg, preprocessed
from tests.test_predict import compose_predict

CLASSES = ["clean", "crack", "stain"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> tuple[Path, Path]:
    """(the class folders, the run's best.ckpt): a dark line is a crack, a brown square a stain."""
    from crack_lightning.train import train

    tmp = tmp_path_factory.mktemp("three_classes")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp / "images" / name).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(110, 150, (40, 40, 3)).astype(np.uint8)
            if name == "crack":
                col = rng.integers(5, 35)
                img[:, col:col + 2] = 20
            elif name == "stain":
                top, left = rng.integers(5, 25, 2)
                img[top:top + 12, left:left + 12] = [150, 90, 40]
            Image.fromarray(img).save(tmp / "images" / name / f"{i}.png")
    train(compose_cfg(tmp, tmp / "images", ["backbone=custom_cnn"]))
    return tmp / "images", tmp / "run" / "checkpoints" / "best.ckpt"


def test_the_card_knows_the_classes_and_the_crack_class(three_classes):
    _, ckpt = three_classes
    loaded = load_classifier(ckpt)
    assert loaded.card.class_names == CLASSES and loaded.card.positive_classes == ["crack"]
    assert loaded.card.positive_labels == [1] and loaded.model.head[-1].out_features == 3


def test_predict_py_writes_every_class_probability(three_classes, tmp_path):
    images, ckpt = three_classes
    proc = run_py("predict.py", [f"ckpt={ckpt}", f"input={images}", f"output_dir={tmp_path / 'out'}",
                                 f"hydra.run.dir={tmp_path / 'hydra'}", "num_workers=0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(tmp_path / "out" / "predictions.csv")
    assert list(rows[0]) == [*COLUMNS, "crack", *(f"prob_{c}" for c in CLASSES)] == columns(CLASSES)
    assert len(rows) == 36 and {r["true_label"] for r in rows} == set(CLASSES)
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert r["label"] == CLASSES[int(np.argmax(probs))]  # the most likely class
        assert float(r["crack_probability"]) == pytest.approx(probs[1], abs=1e-6)  # P(any crack class)
        assert r["crack"] == str(float(r["crack_probability"]) > float(r["threshold"])).lower()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["class_folders"] == CLASSES and metrics["images"] == 36
    assert metrics["counts"]["true_positive"] + metrics["counts"]["false_negative"] == 12  # crack vs the rest
    assert 0 <= metrics["class_accuracy"] <= 1


def test_onnx_export_keeps_the_classes_and_agrees_with_the_checkpoint(three_classes, tmp_path):
    images, ckpt = three_classes
    output = tmp_path / "three.onnx"
    result = export(export_cfg(tmp_path, [f"ckpt={ckpt}", f"output={output}", f"input={images}"]))
    assert result["max_abs_diff"] <= 1e-4
    model = onnx.load(str(output))
    assert [o.name for o in model.graph.output] == ["crack_probability", "logits"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES and json.loads(meta["positive_classes"]) == ["crack"]

    onnx_backend, torch_backend = OnnxBackend(output), TorchBackend(load_classifier(ckpt))
    assert onnx_backend.card.positive_classes == ["crack"]
    batch = preprocessed(sorted(images.rglob("*.png")), onnx_backend.card.preprocessing)
    logits = onnx_backend.logits(batch)
    assert logits.shape == (36, 3)
    for got, expected in zip(onnx_backend.scores(batch), torch_backend.scores(batch)):
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4

    # predict.py on the .onnx file: the same columns, probabilities within the parity tolerance
    predict(compose_predict([f"ckpt={output}", f"input={images}", f"output_dir={tmp_path / 'onnx'}"]))
    rows = read_rows(tmp_path / "onnx" / "predictions.csv")
    assert list(rows[0]) == columns(CLASSES)
    assert all(sum(float(r[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-6) for r in rows)


def test_whole_photos_take_the_most_crack_like_window(three_classes, tmp_path):
    images, ckpt = three_classes
    wall = np.full((80, 120, 3), 130, np.uint8)
    wall[:, 70:72] = 20
    (tmp_path / "photos").mkdir()
    Image.fromarray(wall).save(tmp_path / "photos" / "wall.png")
    predict(compose_predict([f"ckpt={ckpt}", f"input={tmp_path / 'photos'}", "tile=true",
                             f"output_dir={tmp_path / 'out'}", "heatmap.max_side=64"]))
    (row,) = read_rows(tmp_path / "out" / "predictions.csv")
    assert list(row) == columns(CLASSES, tile=True)
    tiles = read_rows(Path(row["tiles_csv"]))
    assert float(row["crack_probability"]) == pytest.approx(max(float(t["crack_probability"]) for t in tiles), abs=1e-6)
    probs = [float(row[f"prob_{c}"]) for c in CLASSES]  # of that window
    assert probs[1] == pytest.approx(float(row["crack_probability"]), abs=1e-6)
    assert row["label"] == CLASSES[int(np.argmax(probs))]


def test_gradcam_of_the_predicted_class(three_classes):
    images, ckpt = three_classes
    loaded = load_classifier(ckpt)
    model = loaded.model
    batch = torch.from_numpy(preprocessed(sorted(images.rglob("*.png"))[:1], loaded.card.preprocessing))
    with torch.no_grad():
        predicted = int(model(batch).argmax(dim=1))
    maps = gradcam(model, batch)
    assert maps.shape == (1, 32, 32) and torch.isfinite(maps).all()
    assert torch.equal(maps, gradcam(model, batch, target=predicted))


def test_two_class_files_read_as_before(tmp_path):
    """An .onnx file written before N classes has no positive_classes: label 1 is the crack class;
    the CSV keeps its columns; three class folders of other names leave a two-class model's input
    unlabelled (no order maps them to its [no crack, crack])."""
    pre = Preprocessing((32, 32), "bilinear", (0.5,) * 3, (0.25,) * 3)
    meta = ModelCard(["Negative", "Positive"], pre).to_onnx_metadata()
    del meta["positive_classes"]
    card = ModelCard.from_onnx_metadata(meta)
    assert card.positive_classes == ["Positive"] and card.positive_labels == [1]
    assert columns(card.class_names) == COLUMNS
    three = ModelCard(CLASSES, pre, positive_classes=["crack"]).to_onnx_metadata()
    del three["positive_classes"]  # more classes cannot guess which are cracks: one line, not a wrong default
    with pytest.raises(CrackLightningError, match="no positive_classes to say which are cracks"):
        ModelCard.from_onnx_metadata(three)
    for name in ("Negative", "Positive", "stain"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    assert find_inputs(str(tmp_path), ["no", "yes"]).labels is None
    assert find_inputs(str(tmp_path), ["Negative", "stain", "Positive"]).class_folders == ["Negative", "stain",
                                                                                          "Positive"]
