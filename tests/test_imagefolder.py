"""One ImageFolder rule: training, ``crack-validate``, ``make data`` and ``predict.py input=`` take
the same image files of the same classes from a folder full of what archives, file managers and
notebooks leave behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from crack_lightning.data.imagefolder import (
    class_folders, count_images, find_imagefolder, has_image_extension, is_image_name, is_system_name,
    resolve_class_names, scan_files,
)
from crack_lightning.data.quality.validate import validate
from crack_lightning.data.sources import install
from crack_lightning.inference.sources import find_inputs

# (path under root, class folder or None when it is no image of the dataset)
ODD = {
    "Positive/a.jpg": "Positive",
    "Positive/B.JPG": "Positive",  # upper-case extension
    "Positive/site2/c.png": "Positive",  # nested sub-folders belong to their class
    "Positive/site2/deeper/d.jpeg": "Positive",
    "Positive/._a.jpg": None,  # AppleDouble resource fork next to its image
    "Positive/.ipynb_checkpoints/e.jpg": None,  # hidden folder
    "Negative/f.jpg": "Negative",
    "Negative/g.bmp": "Negative",
    "Negative/._f.jpg": None,
    "__MACOSX/Positive/._a.jpg": None,  # archive leftover: no class, never scanned
    "__MACOSX/Positive/z.jpg": None,
    "__MACOSX/._x.jpg": None,
    ".ipynb_checkpoints/h.jpg": None,
}
OTHER_FILES = ("Positive/.DS_Store", "Negative/Thumbs.db", "Negative/notes.txt", ".DS_Store")


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd") / "data"
    for k, (rel, cls) in enumerate(ODD.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if cls is None and Path(rel).name.startswith("._"):
            (root / rel).write_bytes(b"\x00\x05\x16\x07AppleDouble")  # what macOS writes: no image
        else:
            fmt = {".png": "PNG", ".bmp": "BMP"}.get(Path(rel).suffix.lower(), "JPEG")
            Image.new("RGB", (40, 40), (20 * k, 100, 200 - 10 * k)).save(root / rel, fmt)
    for rel in OTHER_FILES:
        (root / rel).write_bytes(b"not an image")
    return root


def test_the_rule_itself():
    assert is_system_name(".DS_Store") and is_system_name("._x.jpg") and is_system_name("__MACOSX")
    assert not is_system_name("Positive")
    assert has_image_extension("x.JPG") and not has_image_extension("Thumbs.db")
    assert is_image_name("x.TIFF") and not is_image_name("._x.jpg") and not is_image_name("notes.txt")


def test_every_reader_takes_the_same_images(odd_root):
    want = {rel: cls for rel, cls in ODD.items() if cls is not None}
    assert class_folders(odd_root) == ["Negative", "Positive"]  # __MACOSX and hidden folders are no class
    names = resolve_class_names(odd_root, None)
    assert names == ["Negative", "Positive"]

    def rel(path: Path, root: Path) -> str:
        return Path(path).relative_to(root).as_posix()

    # (1) training
    samples, broken, _ = scan_files(odd_root, names)
    training = {rel(s.path, odd_root.resolve()): names[s.label] for s in samples}
    assert training == want and not broken

    # (2) crack-validate: its classes, per-class counts and image list are training's
    report = validate(odd_root, workers=1)
    assert report["classes"] == names and report["training"]["refused"] is None
    assert {c: v["images"] for c, v in report["per_class"].items()} == {"Negative": 2, "Positive": 4}
    assert report["summary"]["counts"]["class_folders"] == 0 and report["empty_classes"] == []
    assert {p["path"] for p in report["non_image_files"]} == {"Negative/Thumbs.db", "Negative/notes.txt"}
    assert not any(v for v in report["problems"].values())
    ignored = {i["path"] for i in report["ignored"]}
    assert {"__MACOSX", ".ipynb_checkpoints", "Positive/._a.jpg", "Positive/.ipynb_checkpoints"} <= ignored

    # (3) make data: its counts, and the folder it finds in an extracted archive
    assert install.count_images(odd_root, names) == {"Negative": 2, "Positive": 4}  # what get_data calls
    assert install.find_imagefolder(odd_root.parent, names) == odd_root

    # (4) predict.py input=<folder of class folders>: the same files, labelled by their class folder
    inputs = find_inputs(str(odd_root), names)
    assert inputs.class_folders == names
    assert {rel(p, odd_root): names[label] for p, label in zip(inputs.files, inputs.labels)} == want
    # ... and a class folder alone, as a plain folder of photos
    plain = find_inputs(str(odd_root / "Positive"))
    assert {rel(p, odd_root) for p in plain.files} == {r for r, c in want.items() if c == "Positive"}
    assert plain.labels is None
    # ... and a glob: the same names left out (globbing itself skips dot-names, not __MACOSX/)
    globbed = find_inputs(str(odd_root / "**" / "*.*"))
    assert {rel(p, odd_root) for p in globbed.files} == set(want)


def test_archive_leftovers_are_never_the_dataset(tmp_path):
    """An extracted archive whose __MACOSX copy sorts first: make data finds the real folder."""
    for top in ("__MACOSX/data", "@eaDir/data", "real/data"):
        for cls in ("Negative", "Positive"):
            (tmp_path / top / cls).mkdir(parents=True)
    assert find_imagefolder(tmp_path, ["Negative", "Positive"]) == tmp_path / "real" / "data"
    assert count_images(tmp_path / "missing", ["Negative"]) == {}
    assert count_images(tmp_path / "real" / "data", ["Negative", "Other"]) == {"Negative": 0, "Other": 0}
