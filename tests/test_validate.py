"""The dataset validator, its fingerprints and the dataset card.

A clean synthetic corpus must give no finding at all; a copy with planted problems
(zero-byte, truncated JPEG, text named .jpg, non-image file, exact duplicates within
and across classes, near-duplicates re-encoded and shifted by a pixel) must give
exactly those, each under its own heading.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crack_lightning.data.quality import fingerprints as fpm
from crack_lightning.data.quality.card import CARD_JSON, CARD_MD, EXAMPLES_PNG, LICENCE_PLACEHOLDER, write_card
from crack_lightning.data.synthetic.generate import generate
from crack_lightning.cli.validate import main
from crack_lightning.data.quality.validate import HEADINGS, validate

PER_CLASS = 30
SPLIT_KEYS = {k for k, _ in HEADINGS if k.startswith("split_")}


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "data"
    generate(root, per_class=PER_CLASS, seed=11)
    return root


@pytest.fixture(scope="module")
def clean_report(clean_root) -> dict:
    return validate(clean_root, workers=2)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def shifted_1px_pad(path: Path, quality: int) -> bytes:
    """Shift left by one pixel (the right column repeats), re-encode at ``quality``."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    out = Image.new("RGB", (w, h))
    out.paste(im.crop((1, 0, w, h)), (0, 0))
    out.paste(im.crop((w - 1, 0, w, h)), (w - 1, 0))
    return _jpeg(out, quality)


def cropped_1px_resized(path: Path, quality: int) -> bytes:
    """Crop one pixel row off the top, resize back, re-encode at ``quality``."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    return _jpeg(im.crop((0, 1, w, h)).resize((w, h), Image.Resampling.BICUBIC), quality)


# Synthetic JPEGs use quality 60-95, so 45 and 50 are always "another quality".
PLANTED = {
    "empty": {"Positive/zero.jpg"},
    "truncated": {"Positive/cut.jpg"},
    "not_image": {"Negative/readme.jpg"},
    "unreadable": set(),
}


@pytest.fixture(scope="module")
def dirty_root(clean_root, tmp_path_factory) -> Path:
    root = _copy(clean_root, tmp_path_factory.mktemp("dirty") / "data")
    pos, neg = root / "Positive", root / "Negative"
    (pos / "zero.jpg").write_bytes(b"")
    data = (pos / "00002.jpg").read_bytes()
    (pos / "cut.jpg").write_bytes(data[: len(data) // 2])
    (neg / "readme.jpg").write_text("This is not a picture of concrete.\n")
    (neg / "notes.txt").write_text("collected on site 3\n")
    shutil.copy(pos / "00003.jpg", pos / "00003_copy.jpg")
    shutil.copy(pos / "00004.jpg", neg / "00004_from_pos.jpg")
    (pos / "00005_near.jpg").write_bytes(shifted_1px_pad(pos / "00005.jpg", quality=50))
    (neg / "00006_near.jpg").write_bytes(cropped_1px_resized(pos / "00006.jpg", quality=45))
    return root


@pytest.fixture(scope="module")
def dirty_report(dirty_root) -> dict:
    return validate(dirty_root, workers=2)


def _paths(items) -> set[str]:
    return {i["path"] for i in items}


def _groups(groups) -> set[frozenset]:
    return {frozenset(g["paths"]) for g in groups}


def _pairs(pairs) -> set[tuple[str, str]]:
    return {(p["a"], p["b"]) for p in pairs}


# --- fingerprints -------------------------------------------------------------------------


def test_phash_matches_imagehash(clean_root):
    imagehash = pytest.importorskip("imagehash")
    files = sorted(clean_root.glob("*/*.jpg"))[::6]
    for f in files:
        with Image.open(f) as im:
            for img in (im, im.convert("RGBA"), im.convert("L").resize((100, 60))):
                assert fpm.phash(img) == int(str(imagehash.phash(img)), 16), f
    assert all(0 <= fpm.phash(Image.open(f)) < 2**64 for f in files)


def test_near_pairs_equals_brute_force():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**64 - 1, 700, dtype=np.uint64, endpoint=True)
    h[9] = h[3] ^ np.uint64(0b101)  # distance 2
    h[699] = h[0]  # distance 0
    full = np.bitwise_count(h[:, None] ^ h[None, :])
    for d in (0, 2, 22, 64):
        for n, tiles in ((len(h), ((64, 8192), (7, 50))), (40, ((1, 1), (3, 2)))):
            i, j = np.nonzero(np.triu(full[:n, :n] <= d, 1))
            want = np.stack([i, j], axis=1)
            for tile in tiles:
                got = fpm.near_pairs(h[:n], d, *tile)
                assert got.dtype == np.int64 and np.array_equal(got, want), (d, n, tile)
    assert {tuple(p) for p in fpm.near_pairs(h, 2)} >= {(3, 9), (0, 699)}
    assert fpm.near_pairs(h[:1], 64).shape == (0, 2)
    assert fpm.near_pairs(np.zeros(0, np.uint64), 5).shape == (0, 2)


def _shape_and_mean(rgb: np.ndarray) -> np.ndarray:  # module level: picklable for workers
    return np.array([*rgb.shape, rgb.mean()])


def test_fingerprint_kinds(tmp_path, clean_root):
    src = clean_root / "Positive" / "00001.jpg"
    data = src.read_bytes()
    files = {
        "ok.jpg": data,
        "empty.jpg": b"",
        "half.jpg": data[: len(data) // 2],
        "no_eoi.jpg": data[:-2],  # everything but the end-of-image marker
        "text.jpg": b"hello\n",
        "trailing.jpg": data + b"\0" * 64,  # padding after EOI is fine
    }
    png = io.BytesIO()
    Image.open(src).save(png, "PNG")
    files["half.png"] = png.getvalue()[: len(png.getvalue()) // 2]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    got = {n: fpm.fingerprint_file(tmp_path / n) for n in files}
    kinds = {n: f.kind for n, f in got.items()}
    assert kinds == {"ok.jpg": "ok", "empty.jpg": "empty", "half.jpg": "truncated", "no_eoi.jpg": "truncated",
                     "text.jpg": "not_image", "trailing.jpg": "ok", "half.png": "truncated"}
    ok = got["ok.jpg"]
    assert (ok.format, ok.mode, ok.size, ok.nbytes) == ("JPEG", "RGB", (227, 227), len(data))
    assert ok.phash == fpm.phash(Image.open(src)) and ok.error is None and ok.extra is None
    assert got["trailing.jpg"].phash == ok.phash and got["trailing.jpg"].sha256 != ok.sha256
    assert all(f.phash is None and f.error for n, f in got.items() if f.kind != "ok")
    assert fpm.fingerprint_file(tmp_path / "missing.jpg").kind == "unreadable"
    # Many files: same answers in input order on 1 or 2 processes, extra computed on the RGB image.
    paths = sorted(clean_root.glob("*/*.jpg"))[:40] + [tmp_path / n for n in files]
    one = fpm.fingerprint_files(paths, workers=1, extra=_shape_and_mean)
    two = fpm.fingerprint_files(paths, workers=2, extra=_shape_and_mean)
    assert [f.path for f in two] == [Path(p) for p in paths]
    assert [(f.sha256, f.kind, f.phash) for f in one] == [(f.sha256, f.kind, f.phash) for f in two]
    assert np.allclose(two[0].extra, [227, 227, 3, np.asarray(Image.open(paths[0]).convert("RGB")).mean()])
    assert all((f.extra is None) == (f.kind != "ok") for f in two)


def test_verify_pairs_separates_near_duplicates_from_lookalikes(tmp_path, clean_root):
    src = clean_root / "Negative" / "00010.jpg"
    (tmp_path / "shift.jpg").write_bytes(shifted_1px_pad(src, quality=50))
    (tmp_path / "crop.jpg").write_bytes(cropped_1px_resized(src, quality=45))
    Image.open(src).resize((180, 180)).save(tmp_path / "small.png")
    others = sorted(clean_root.glob("*/*.jpg"))[:12]
    paths = [src, tmp_path / "shift.jpg", tmp_path / "crop.jpg", tmp_path / "small.png", *others]
    near = np.array([[0, 1], [0, 2], [1, 2], [0, 3]])
    far = np.array([[i, j] for i in range(4, len(paths)) for j in range(i + 1, len(paths))])
    got = fpm.verify_pairs(paths, np.concatenate([near, far]), workers=2)
    assert got.shape == (len(near) + len(far), 3)
    assert (got[: len(near), 0] > 0.7).all(), got[: len(near)]
    assert (got[len(near):, 0] < 0.35).all(), got[len(near):].max(axis=0)
    assert list(got[0, 1:]) == [-1, 0]  # the copy moved one pixel left: best match at dx = -1


# --- the validator ------------------------------------------------------------------------


def test_clean_corpus_reports_nothing(clean_report):
    r = clean_report
    assert r["summary"]["clean"] is True
    assert all(v == 0 for v in r["summary"]["counts"].values()), r["summary"]["counts"]
    assert set(r["summary"]["counts"]) == {k for k, _ in HEADINGS} - SPLIT_KEYS
    assert r["classes"] == ["Negative", "Positive"]
    assert {c: v["images"] for c, v in r["per_class"].items()} == {"Negative": PER_CLASS, "Positive": PER_CLASS}
    assert r["sizes"] == {"227x227": 2 * PER_CLASS} and r["modes"] == {"RGB": 2 * PER_CLASS}
    assert r["formats"] == {"JPEG": 2 * PER_CLASS}
    assert r["root_files"] == ["synthetic.json"]  # listed, not checked
    assert r["splits"] is None
    json.dumps(r)  # JSON-ready as it is


def test_every_planted_problem_is_found_under_its_heading(dirty_report):
    r = dirty_report
    assert {k: _paths(v) for k, v in r["problems"].items()} == PLANTED
    assert _paths(r["non_image_files"]) == {"Negative/notes.txt"}
    assert _groups(r["exact_duplicates"]["within_class"]) == {frozenset({"Positive/00003.jpg", "Positive/00003_copy.jpg"})}
    assert _groups(r["exact_duplicates"]["across_classes"]) == {
        frozenset({"Negative/00004_from_pos.jpg", "Positive/00004.jpg"})}
    assert _pairs(r["near_duplicates"]["within_class"]) == {("Positive/00005.jpg", "Positive/00005_near.jpg")}
    assert _pairs(r["near_duplicates"]["across_classes"]) == {("Negative/00006_near.jpg", "Positive/00006.jpg")}
    counts = r["summary"]["counts"]
    assert counts == {"class_folders": 0, "empty": 1, "not_image": 1, "truncated": 1, "unreadable": 0,
                      "broken": 0, "non_image_files": 1,
                      "empty_classes": 0, "exact_within_class": 1, "exact_across_classes": 1,
                      "near_within_class": 1, "near_across_classes": 1}
    assert r["summary"]["clean"] is False
    assert r["exact_duplicates"]["across_classes"][0]["classes"] == ["Negative", "Positive"]
    near = r["near_duplicates"]["within_class"][0]
    assert near["correlation"] >= 0.7 and near["phash_distance"] <= r["settings"]["near_distance"]
    # Readable images only in the counts; broken and non-image files counted apart.
    assert r["per_class"]["Positive"] == {**r["per_class"]["Positive"], "images": PER_CLASS + 2,
                                          "problem_files": 2, "non_image_files": 0}
    assert r["per_class"]["Negative"] == {**r["per_class"]["Negative"], "images": PER_CLASS + 2,
                                          "problem_files": 1, "non_image_files": 1}
    assert r["totals"]["images"] == 2 * PER_CLASS + 4


def _write_splits(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "group"])  # unknown columns are ignored
        for p, label, split in rows:
            w.writerow([p, label, split, "g0"])
    return path


def test_splits_leaks_and_listing(tmp_path, clean_root):
    root = _copy(clean_root, tmp_path / "data")
    pos = root / "Positive"
    shutil.copy(pos / "00007.jpg", pos / "00007_dup.jpg")
    (pos / "00008_near.jpg").write_bytes(shifted_1px_pad(pos / "00008.jpg", quality=50))
    shutil.copy(pos / "00009.jpg", pos / "00009_same_split.jpg")
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    where = {"Positive/00007_dup.jpg": "test", "Positive/00008_near.jpg": "val",
             "Negative/00001.jpg": "test", "Negative/00002.jpg": "val"}
    rows = [(f, f.split("/")[0], where.get(f, "train")) for f in files if f != "Negative/00003.jpg"]
    rows[0] = (rows[0][0], "Positive", rows[0][2])  # Negative/00001.jpg labelled Positive
    rows += [("Positive/gone.jpg", "Positive", "train"), ("Negative/00004.jpg", "Negative", "test")]
    csv_path = _write_splits(tmp_path / "splits.csv", rows)

    s = validate(root, splits_csv=csv_path, workers=1)["splits"]
    assert [g["paths"] for g in s["exact_duplicates_across_splits"]] == [["Positive/00007.jpg", "Positive/00007_dup.jpg"]]
    assert s["exact_duplicates_across_splits"][0]["splits"] == ["train", "test"]
    assert _pairs(s["near_duplicates_across_splits"]) == {("Positive/00008.jpg", "Positive/00008_near.jpg")}
    assert {(p["split_a"], p["split_b"]) for p in s["near_duplicates_across_splits"]} == {("train", "val")}
    assert _paths(s["missing"]) == {"Positive/gone.jpg"}
    assert s["unlisted"] == ["Negative/00003.jpg"]
    assert s["listed_twice"] == [{"path": "Negative/00004.jpg", "splits": ["train", "test"]}]
    assert [(m["path"], m["label"], m["folder"]) for m in s["label_mismatch"]] == [("Negative/00001.jpg", "Positive", "Negative")]
    assert s["counts"] == {"test": 2, "train": len(files) - 4, "val": 2}

    # The same data with an honest split: duplicates in one split are no leak.
    honest = [(f, f.split("/")[0], "test" if f.startswith(("Positive/00007", "Positive/00008")) else "train")
              for f in files]
    r = validate(root, splits_csv=_write_splits(tmp_path / "honest.csv", honest), workers=1)
    counts = r["summary"]["counts"]
    assert {k: v for k, v in counts.items() if k in SPLIT_KEYS} == dict.fromkeys(SPLIT_KEYS, 0)
    assert counts["exact_within_class"] == 2 and counts["near_within_class"] == 1


# --- the command line and the card --------------------------------------------------------


def test_cli_exit_codes_and_json(tmp_path, clean_root, dirty_root, capsys):
    out = tmp_path / "reports" / "clean.json"
    assert main([str(clean_root), "--json", str(out), "--workers", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["summary"]["clean"] is True and report["totals"]["images"] == 2 * PER_CLASS
    assert "clean" in capsys.readouterr().out

    dirty_json = tmp_path / "dirty.json"
    assert main([str(dirty_root), "--json", str(dirty_json), "--workers", "2"]) == 1
    printed = capsys.readouterr().out
    for name in ("Positive/zero.jpg", "Positive/cut.jpg", "Negative/readme.jpg", "Negative/notes.txt",
                 "Positive/00003_copy.jpg", "00005_near.jpg", "problems found"):
        assert name in printed
    dirty = json.loads(dirty_json.read_text())
    assert {k: _paths(v) for k, v in dirty["problems"].items()} == PLANTED
    assert all(not p["path"].startswith("/") for v in dirty["problems"].values() for p in v)

    for argv, fragment in (([str(tmp_path / "nope")], "no such folder"),
                           ([str(clean_root / "Positive")], "no class sub-folders"),
                           ([str(clean_root), "--splits", str(tmp_path / "none.csv")], "no such file"),
                           ([str(clean_root), "--near-distance", "65"], "--near-distance")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,fold\nx.jpg,1\n")
    assert main([str(clean_root), "--splits", str(bad_csv)]) == 2
    assert "path and split" in capsys.readouterr().err
    assert main([str(clean_root), "--no-such-option"]) == 2

    # A class folder without a single readable image is a finding of its own.
    sparse = tmp_path / "sparse"
    (sparse / "Positive").mkdir(parents=True)
    (sparse / "Negative" / "nested").mkdir(parents=True)
    shutil.copy(clean_root / "Positive" / "00001.jpg", sparse / "Positive" / "a.jpg")
    (sparse / "Negative" / "nested" / "b.jpg").write_bytes(b"")
    assert main([str(sparse), "--json", str(tmp_path / "sparse.json")]) == 1
    sparse_report = json.loads((tmp_path / "sparse.json").read_text())
    assert sparse_report["empty_classes"] == ["Negative"]
    assert _paths(sparse_report["problems"]["empty"]) == {"Negative/nested/b.jpg"}
    assert {k for k, v in sparse_report["summary"]["counts"].items() if v} == {"empty", "empty_classes"}


def test_card_written_next_to_the_data(tmp_path, clean_root, dirty_report):
    root = _copy(clean_root, tmp_path / "data")
    md = write_card(root)  # runs the validator itself
    assert md == root / CARD_MD
    assert json.loads((root / CARD_JSON).read_text())["summary"]["clean"] is True
    text = md.read_text()
    assert "| Positive | 30 |" in text and "227x227: 60" in text and "No problems found" in text
    assert LICENCE_PLACEHOLDER in text  # make data replaces this line with the source's licence
    with Image.open(root / EXAMPLES_PNG) as png:
        png.load()
        assert png.format == "PNG" and png.width > 8 * 100 and png.height > 2 * 100
    # The card's files sit in root, not in a class folder: the data still validates clean.
    again = validate(root, workers=1)
    assert again["summary"]["clean"] and set(again["root_files"]) == {
        "synthetic.json", CARD_MD, CARD_JSON, EXAMPLES_PNG}

    # With a report of a dirty dataset the card lists what was found; broken files are never examples.
    dirty_root = Path(dirty_report["root"])
    card_dir = _copy(dirty_root, tmp_path / "dirty")
    text = write_card(card_dir, {**dirty_report, "root": str(card_dir)}, licence="CC BY 4.0, cite X.").read_text()
    assert "zero-byte files | 1 | `Positive/zero.jpg" in text and "near-duplicates across classes" in text
    assert "CC BY 4.0, cite X." in text and LICENCE_PLACEHOLDER not in text
    with Image.open(card_dir / EXAMPLES_PNG) as png:
        png.load()
