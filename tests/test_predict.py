"""predict.py: inputs, a corrupt file among good ones, labelled folders, whole photos."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.utils.files import sha256_file
from crack_lightning.inference.predict import predict
from crack_lightning.inference.sources import find_inputs
from tests.conftest import CONF, REPO


def run_predict_py(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the real `python predict.py ...` in a subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "predict.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def compose_predict(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="predict", overrides=["num_workers=0", *overrides])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def folder_with_corrupt_file(tmp_path, tiny_data) -> Path:
    """4 + 4 good images in class folders, one file that is no JPEG and one truncated."""
    root = tmp_path / "photos"
    for cls in ("Negative", "Positive"):
        (root / cls).mkdir(parents=True)
        for src in sorted((tiny_data / cls).glob("*.jpg"))[:4]:
            shutil.copy(src, root / cls / src.name)
    (root / "Positive" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    data = (root / "Negative" / sorted(os.listdir(root / "Negative"))[0]).read_bytes()
    (root / "Negative" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return root


def test_find_inputs(tmp_path, tiny_data):
    flat = tmp_path / "flat" / "deep"
    flat.mkdir(parents=True)
    for i, src in enumerate(sorted((tiny_data / "Positive").glob("*.jpg"))[:3]):
        shutil.copy(src, flat / f"{2 - i}.JPG")
    (flat / "notes.txt").write_text("not an image")
    (flat / "._0.JPG").write_bytes(b"AppleDouble metadata")  # hidden and system files: skipped, as in training
    (tmp_path / "flat" / "__MACOSX").mkdir()
    shutil.copy(flat / "0.JPG", tmp_path / "flat" / "__MACOSX" / "3.JPG")
    inputs = find_inputs(str(tmp_path / "flat"))  # recursive, case-insensitive extensions, sorted
    assert [p.name for p in inputs.files] == ["0.JPG", "1.JPG", "2.JPG"] and inputs.labels is None
    assert len(find_inputs(str(tmp_path / "**" / "1.JPG")).files) == 1
    assert find_inputs(str(flat / "notes.txt")).files == [flat / "notes.txt"]  # an explicit file is taken as is
    with pytest.raises(CrackLightningError, match="no image matches"):
        find_inputs(str(tmp_path / "nothing-*.png"))
    with pytest.raises(CrackLightningError, match="holds no images"):
        find_inputs(str((tmp_path / "empty").mkdir() or tmp_path / "empty"))
    labelled = find_inputs(str(tiny_data), ["Negative", "Positive"])
    assert labelled.class_folders == ["Negative", "Positive"]
    assert labelled.labels == [int(p.parent.name == "Positive") for p in labelled.files]
    # other folder names: found through the crack names (positive, crack, ...)
    assert find_inputs(str(tiny_data), ["no", "yes"]).class_folders == ["Negative", "Positive"]


def test_predict_folder_with_corrupt_file(tmp_path, trained_run, folder_with_corrupt_file):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "out"
    summary = predict(compose_predict([f"ckpt={ckpt}", f"input={folder_with_corrupt_file}",
                                       f"output_dir={out}", "batch_size=3"]))
    rows = read_rows(out / "predictions.csv")
    assert len(rows) == summary["images"] == 10 and summary["errors"] == 2
    bad = {Path(r["path"]).name: r for r in rows if r["error"]}
    assert set(bad) == {"corrupt.jpg", "truncated.jpg"}
    assert all(r["crack_probability"] == "" and r["label"] == "" for r in bad.values())
    good = [r for r in rows if not r["error"]]
    assert len(good) == 8
    assert all(0 <= float(r["crack_probability"]) <= 1 and r["label"] in ("Negative", "Positive") for r in good)
    assert all(r["label"] == ("Positive" if float(r["crack_probability"]) > float(r["threshold"]) else "Negative")
               for r in good)
    assert {r["model_hash"] for r in rows} == {sha256_file(ckpt)[:12]}
    assert {r["true_label"] for r in good} == {"Negative", "Positive"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 8 and metrics["unlabelled_or_unreadable"] == 2
    assert sum(metrics["counts"].values()) == 8 and 0 <= metrics["recall"] <= 1
    assert metrics["missed_cracks"] == metrics["counts"]["false_negative"]

    # gradcam=N: overlays of the N most likely cracks
    summary = predict(compose_predict([f"ckpt={ckpt}", f"input={folder_with_corrupt_file}",
                                       f"output_dir={tmp_path / 'cam'}", "gradcam=3"]))
    assert summary["gradcam"] == str(tmp_path / "cam" / "gradcam.png")
    assert Image.open(summary["gradcam"]).size[0] > 300

    # threshold= overrides the model's: at 0 everything is a crack
    predict(compose_predict([f"ckpt={ckpt}", f"input={folder_with_corrupt_file}/Negative",
                             f"output_dir={tmp_path / 'zero'}", "threshold=0"]))
    rows = [r for r in read_rows(tmp_path / "zero" / "predictions.csv") if not r["error"]]
    assert {(r["label"], float(r["threshold"])) for r in rows} == {("Positive", 0.0)}
    assert not (tmp_path / "zero" / "metrics.json").exists()  # no class folders under Negative/


def test_user_errors(tmp_path, trained_run):
    with pytest.raises(CrackLightningError, match="input= is required"):
        predict(compose_predict([f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"output_dir={tmp_path}"]))
    with pytest.raises(CrackLightningError, match="threshold=1.5"):
        predict(compose_predict(["ckpt=x.ckpt", "input=.", f"output_dir={tmp_path}", "threshold=1.5"]))
    with pytest.raises(CrackLightningError, match="no such file"):
        predict(compose_predict([f"ckpt={tmp_path / 'missing.ckpt'}", "input=.", f"output_dir={tmp_path}"]))


def test_predict_py_tile_on_whole_photos(tmp_path, trained_run):
    """The real command end to end: a non-multiple-of-patch photo and a broken one, exit 0."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (400, 613, 3), dtype=np.uint8)).save(photos / "wall.jpg")
    (photos / "broken.png").write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out"
    proc = run_predict_py([f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"input={photos}", "tile=true",
                           f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}", "heatmap.max_side=500"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {Path(r["path"]).name: r for r in read_rows(out / "predictions.csv")}
    assert rows["broken.png"]["error"] and rows["broken.png"]["tiles"] == ""
    wall = rows["wall.jpg"]
    assert wall["label"] == ("Positive" if float(wall["crack_probability"]) > float(wall["threshold"]) else "Negative")
    tiles = read_rows(Path(wall["tiles_csv"]))
    assert not wall["error"] and int(wall["tiles"]) == len(tiles) > 1
    assert max(float(t["crack_probability"]) for t in tiles) == pytest.approx(float(wall["crack_probability"]), abs=1e-5)
    # the windows (dense mode's, the default) reach every edge of the 400 x 613 photo
    assert {int(t["top"]) + int(t["height"]) for t in tiles} >= {400} and min(int(t["top"]) for t in tiles) == 0
    assert {int(t["left"]) + int(t["width"]) for t in tiles} >= {613} and min(int(t["left"]) for t in tiles) == 0
    with Image.open(wall["heatmap"]) as png:
        assert max(png.size) <= 500
    assert "1 unreadable" in proc.stdout + proc.stderr
