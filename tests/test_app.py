"""app.py's Inspector and page: the CSV is predict.py's, a threshold moves without the model, flags
make an ImageFolder, bad uploads are refused with a message; and the same through Gradio's HTTP API
on 127.0.0.1 (the real page, in this process). The browser drives it in test_app_browser.py."""

from __future__ import annotations

import csv
import io
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from crack_lightning import CrackLightningError
from tests.conftest import REPO
from tests.test_serve import _bomb


def _cfg(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


@pytest.fixture(scope="module")
def inspector(trained_run, tmp_path_factory):
    from crack_lightning.app.launch import build

    tmp = tmp_path_factory.mktemp("app")
    cfg = _cfg("app", [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"output_dir={tmp / 'run'}",
                       f"flag_dir={tmp / 'flagged'}", "device=cpu"])
    inspector, page = build(cfg)
    return inspector, page, tmp


def _predict(trained_run, out: Path, spec: str, *overrides: str) -> list[dict]:
    from crack_lightning.inference.predict import predict

    predict(_cfg("predict", [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"input={spec}",
                             f"output_dir={out}", "num_workers=0", "device=cpu", *overrides]))
    return (out / "predictions.csv").read_text()


@pytest.fixture(scope="module")
def photos(tiny_data, tmp_path_factory) -> Path:
    """A flat folder: two patches, a broken .jpg, and a 681x454 'wall' of six patches."""
    folder = tmp_path_factory.mktemp("photos")
    patches = sorted(tiny_data.rglob("*.jpg"))
    for p in patches[:1] + patches[-1:]:
        shutil.copy(p, folder / f"patch_{p.parent.name}_{p.name}")
    (folder / "broken.jpg").write_bytes(b"this is no JPEG")
    wall = Image.new("RGB", (681, 454))
    for k, p in enumerate(patches[::4][:6]):
        wall.paste(Image.open(p), ((k % 3) * 227, (k // 3) * 227))
    (folder / "walls").mkdir()
    wall.save(folder / "walls" / "wall.jpg", quality=95)
    return folder


def test_patches_give_predict_pys_csv_at_any_threshold(inspector, photos, trained_run, tmp_path):
    app, _, _ = inspector
    files = sorted(photos.glob("*.jpg"))
    batch = app.analyse([str(f) for f in files], mode="patches")
    assert not batch.tiled and batch.scores.errors[0].startswith("UnidentifiedImageError")  # broken.jpg: a row
    for threshold in (None, 0.3):
        summary = app.write(batch, threshold)
        extra = [] if threshold is None else [f"threshold={threshold}"]
        expected = _predict(trained_run, tmp_path / str(threshold), str(photos / "*.jpg"), *extra)
        assert Path(summary["predictions"]).read_text() == expected  # byte for byte


def test_whole_photos_are_tiled_with_heatmaps_as_predict_py_does(inspector, photos, trained_run, tmp_path):
    app, _, _ = inspector
    wall = photos / "walls" / "wall.jpg"
    batch = app.analyse([str(wall)])  # auto: over twice the patch on a side -> whole photos
    assert batch.tiled
    for threshold in (0.5, 0.4999):
        got = next(csv.DictReader(open(app.write(batch, threshold)["predictions"])))
        want_text = _predict(trained_run, tmp_path / str(threshold), str(wall), "tile=true", f"threshold={threshold}")
        want = next(csv.DictReader(io.StringIO(want_text)))
        assert {k: v for k, v in got.items() if k not in ("tiles_csv", "heatmap")} == \
            {k: v for k, v in want.items() if k not in ("tiles_csv", "heatmap")}
        assert Path(got["tiles_csv"]).read_text() == Path(want["tiles_csv"]).read_text()
        with Image.open(got["heatmap"]) as png:
            assert max(png.size) <= 1200 and png.width > 100


def test_predict_py_decodes_a_photo_once_and_the_app_again_per_threshold(inspector, photos, trained_run, tmp_path,
                                                                         monkeypatch):
    from crack_lightning.inference import tiling

    app, _, _ = inspector
    loads = []
    load_photo = tiling.load_photo
    monkeypatch.setattr(tiling, "load_photo", lambda path: loads.append(path) or load_photo(path))
    wall = photos / "walls" / "wall.jpg"
    _predict(trained_run, tmp_path / "p", str(wall), "tile=true")
    assert len(loads) == 1 and (tmp_path / "p" / "heatmaps" / "wall.png").is_file()  # drawn while decoded
    batch = app.analyse([str(wall)])
    app.write(batch, 0.3)
    app.write(batch, 0.4)
    assert len(loads) == 4  # the app scores once, then draws the heatmap again at each threshold


def test_the_threshold_says_what_it_costs_on_validation(inspector, trained_run):
    import json

    app, _, _ = inspector
    point = json.loads((trained_run / "operating_point.json").read_text())
    said = app.consequences(point["threshold"])
    assert said["split"] == "validation split" and said["cracks"] == point["cracks"]
    assert said["recall"] == pytest.approx(point["recall"], abs=1e-6)
    assert said["precision"] == pytest.approx(point["precision"], abs=1e-6)
    assert app.consequences(1.0)["missed_cracks"] == point["cracks"]  # nothing is above 1


def test_flags_make_an_imagefolder_training_reads(inspector, photos):
    from crack_lightning.data.imagefolder import resolve_class_names, scan_samples

    app, _, tmp = inspector
    files = sorted(photos.glob("patch_*.jpg"))
    batch = app.analyse([str(f) for f in files], mode="patches")
    first = app.flag(batch, 0, "Positive")
    again = app.flag(batch, 0, "Negative")  # corrected again: it moves, it is not in two classes
    app.flag(batch, 1, "Positive")
    assert not first.exists() and again.parent.name == "Negative" and again.read_bytes() == files[0].read_bytes()
    flag_dir = tmp / "flagged"
    assert resolve_class_names(flag_dir) == ["Negative", "Positive"]
    samples = scan_samples(flag_dir, ["Negative", "Positive"])
    assert sorted(s.label for s in samples) == [0, 1]  # flags.csv beside the class folders is no image
    rows = list(csv.DictReader(open(flag_dir / "flags.csv")))
    assert [r["label"] for r in rows] == ["Positive", "Negative", "Positive"]
    assert rows[1]["model_hash"] == app.backend.model_hash and rows[1]["source"] == str(files[0])
    with pytest.raises(ValueError, match="not one of the model's classes"):
        app.flag(batch, 0, "crack")
    (flag_dir / "Negative" / "theirs.jpg").write_bytes(b"a file app.py did not write")
    moved = app.flag(batch, 0, "Positive")  # our copy moves; the other file stays
    assert moved.exists() and not again.exists() and (flag_dir / "Negative" / "theirs.jpg").exists()



def test_a_folder_of_someone_elses_files_is_no_flag_dir(inspector, photos, tmp_path):
    from crack_lightning.app.inspector import Inspector

    app, _, _ = inspector
    with pytest.raises(CrackLightningError, match="holds files app.py did not write"):
        Inspector(OmegaConf.merge(app.cfg, {"flag_dir": str(photos)}), app.backend)


def test_the_flags_are_a_site_sample_for_recalibrate(inspector, photos, tmp_path):
    """The loop back to the model: recalibrate.py takes the flag folder as it is, and the app offers
    the point it fits."""
    from crack_lightning.evaluation.recalibrate import recalibrate
    from tests.test_evaluate import compose_eval

    app, _, tmp = inspector
    files = sorted(photos.glob("patch_*.jpg"))
    batch = app.analyse([str(f) for f in files], mode="patches")
    for k, f in enumerate(files):  # one of each class (whatever the earlier test left)
        app.flag(batch, k, "Positive" if "_Positive_" in f.name else "Negative")
    result = recalibrate(compose_eval(tmp_path, [f"ckpt={app.cfg.ckpt}", f"data.root={tmp / 'flagged'}",
                                                 "name=field", "eval.calibrate=false"], "recalibrate"))
    assert result["images"] == 2 and result["cracks"] == 1
    from crack_lightning.app.inspector import Inspector

    assert "field" in Inspector(OmegaConf.merge(app.cfg, {"ckpt": result["model"]})).points()


def test_bad_uploads_are_refused_with_a_message(inspector, photos, tmp_path):
    app, _, tmp = inspector
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb())
    archive = tmp_path / "site.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(sorted(photos.glob("patch_*.jpg"))[0], "site/day 1/ok.jpg")
        zf.write(sorted(photos.glob("patch_*.jpg"))[0], "../escape.jpg")  # zip-slip: left out, never written
        zf.writestr("__MACOSX/._x.jpg", b"junk")
        zf.writestr("notes.txt", b"not an image")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    batch = app.analyse([str(bomb), str(archive), str(tmp_path / "bad.zip")], mode="patches")
    assert batch.refused == [next(r for r in batch.refused if r.startswith("bomb.png: "))] and "100000x100000" in \
        batch.refused[0]
    assert len(batch.scores.inputs.files) == 2  # the zip's one image, and bad.zip as a file with an error row
    assert batch.scores.inputs.files[0].is_relative_to(tmp / "run") and batch.scores.inputs.files[0].name == \
        "site__day 1__ok.jpg" and not batch.scores.errors[0]
    assert not (tmp_path.parent / "escape.jpg").exists() and not list((tmp / "run").rglob("escape.jpg"))
    assert batch.scores.errors[1]  # bad.zip is no zip zipfile reads: a file PIL cannot read either
    with pytest.raises(ValueError, match="nothing to score: bomb.png"):
        app.analyse([str(bomb)])


def test_the_page_answers_over_http(inspector, photos, tmp_path):
    from gradio_client import Client, handle_file

    from crack_lightning.app.launch import options

    app, page, _ = inspector
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page.queue().launch(prevent_thread_lock=True, **{**options(app.cfg), "server_port": port})
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        files = [handle_file(str(p)) for p in sorted(photos.glob("*.jpg"))]
        status, table, gallery, download, _, threshold, choices = client.predict(files, None, "patches",
                                                                                 api_name="/analyse")
        assert "3 image(s)" in status and "1 unreadable" in status, status
        assert [row[0] for row in table["data"]] == ["broken.jpg", *sorted(p.name for p in photos.glob("patch_*"))]
        assert table["data"][0][1] == "unreadable" and len(gallery) == 2
        assert threshold == pytest.approx(app.card.threshold)
        assert Path(download).read_text().splitlines()[0].startswith("path,crack_probability,label")
        status, table, _, download, consequences = client.predict(0.25, api_name="/threshold")
        assert "threshold 0.25" in status and {row[3] for row in table["data"]} == {"0.25"}
        assert "missed crack" in consequences
        assert all(line.split(",")[3] == "0.25" for line in Path(download).read_text().splitlines()[1:])
        said = client.predict(choices["choices"][1][0], "Positive", api_name="/flag")
        assert "Saved" in said and "Positive" in said
        said = client.predict(choices["choices"][0][0], "Positive", api_name="/flag")
        assert "could not read it" in said  # the broken upload: a message, nothing saved
        status, table, gallery, download, *_ = client.predict(
            [handle_file(str(photos / "walls" / "wall.jpg"))], None, "auto", api_name="/analyse")
        assert "whole photos" in status and table["data"][0][4].endswith("%")  # its crack area
        assert "heatmaps" in gallery[0]["image"] or gallery[0]["image"].endswith(".png")
        assert "crack_area_fraction" in Path(download).read_text().splitlines()[0]
    finally:
        page.close()


def test_a_site_point_reads_its_own_sample(trained_run, tiny_data, tmp_path):
    """A model with a named point (recalibrate.py's) offers it; choosing it reads scores at its
    temperature and says what its threshold costs on the site sample it was fitted on."""
    from crack_lightning.app.inspector import OWN_POINT, Inspector
    from crack_lightning.evaluation.recalibrate import write_model

    point = {"threshold": 0.42, "temperature": 2.0, "target_recall": 0.9, "split": "site",
             "scores": {"crack": [0.3, 0.5, 0.9], "other": [0.1, 0.45], "cracks": 3, "others": 2}}
    model = write_model(trained_run / "checkpoints" / "best.ckpt", tmp_path, "site_b", point)
    app = Inspector(_cfg("app", [f"ckpt={model}", f"output_dir={tmp_path / 'run'}", f"flag_dir={tmp_path / 'f'}",
                                 "device=cpu"]))
    assert app.points() == [OWN_POINT, "site_b"]
    batch = app.analyse([str(p) for p in sorted(tiny_data.rglob("*.jpg"))[:3]], "patches")
    threshold, rescored = app.use_point("site_b", batch)
    assert threshold == 0.42 and app.card.temperature == 2.0 and rescored.folder != batch.folder
    assert not np.allclose(rescored.scores.probs, batch.scores.probs)  # scored again at its temperature
    said = app.consequences(0.42)
    assert said["split"] == "site sample" and (said["missed_cracks"], said["false_alarms"]) == (1, 1)
    threshold, back = app.use_point(OWN_POINT, rescored)
    assert threshold != 0.42 and app.consequences(0.42)["split"] == "validation split"
    np.testing.assert_allclose(back.scores.probs, batch.scores.probs, atol=1e-6)  # the same at the same point


def test_app_settings_are_checked_before_anything_starts(trained_run):
    from crack_lightning.inference.settings import check_app

    ckpt = trained_run / "checkpoints" / "best.ckpt"
    for overrides, words in ((["port=99999"], "port"), (["max_files=0"], "max_files"),
                             (["tile_size=-3"], "tile_size"), ([], "ckpt= is required")):
        with pytest.raises(CrackLightningError, match=words):
            check_app(_cfg("app", ([f"ckpt={ckpt}"] if words != "ckpt= is required" else []) + overrides))
