"""Bad files and bad dataset shapes: the run trains on exactly the good images and says
what it left out and why; each shape problem stops with one line naming the path and the fix."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.data import CrackDataModule
from crack_lightning.data.quality import fingerprints, screening
from crack_lightning.data.dataset import ImageListDataset, to_rgb
from crack_lightning.data.imagefolder import order_classes, resolve_class_names, scan_samples
from crack_lightning.data.labelled import LabelledSet
from crack_lightning.data.synthetic.render import render_sample
from tests.conftest import compose_cfg

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.25,) * 3}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width=100_000, height=100_000) -> bytes:
    """A valid PNG header claiming ``width x height`` RGB pixels: 30 GB if decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_bomb(side=65_000) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to claim ``side x side`` pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def _render(seed: int, crack: bool) -> Image.Image:
    return render_sample(np.random.default_rng(1000 + seed), crack=crack)[0]


def plant(root: Path) -> tuple[set[str], dict[str, str], dict[str, str]]:
    """Plant every kind of bad and odd file under ``root`` (a copy of the tiny dataset).

    Returns ``(good, bad, ignored)``: the relative paths that must be trained on, and
    the bad / ignored relative paths with the start of the reason expected for each."""
    good = {p.relative_to(root).as_posix() for p in root.glob("*/*.jpg")}
    pos, neg = root / "Positive", root / "Negative"
    a_jpeg = next(pos.glob("*.jpg")).read_bytes()
    # real images in other modes: converted, trained on
    rgba = _render(1, True).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(pos / "alpha.png")
    _render(2, False).convert("L").save(neg / "gray.jpg")
    gray16 = np.asarray(_render(3, False).convert("L"), np.uint16) * 257
    Image.fromarray(gray16).save(neg / "sixteen_bit.png")
    assert Image.open(neg / "sixteen_bit.png").mode.startswith("I")
    _render(4, True).convert("CMYK").save(pos / "cmyk.jpg")
    (pos / "sub" / "deeper").mkdir(parents=True)
    _render(5, True).save(pos / "sub" / "deeper" / "nested.jpg")
    good |= {"Positive/alpha.png", "Negative/gray.jpg", "Negative/sixteen_bit.png", "Positive/cmyk.jpg",
             "Positive/sub/deeper/nested.jpg"}
    # bad image files: left out, with the reason
    (pos / "empty.jpg").write_bytes(b"")
    (neg / "truncated.jpg").write_bytes(a_jpeg[: len(a_jpeg) // 2])
    (neg / "text.jpg").write_text("this is not a picture\n")
    Image.new("RGB", (1, 1), (90, 90, 90)).save(pos / "one_pixel.png")
    (pos / "bomb.png").write_bytes(png_bomb())
    (neg / "bomb.jpg").write_bytes(jpeg_bomb())
    (neg / "locked.jpg").write_bytes(a_jpeg)
    os.symlink("nowhere.jpg", neg / "dangling.jpg")
    os.symlink("loop_b.jpg", neg / "loop_a.jpg")
    os.symlink("loop_a.jpg", neg / "loop_b.jpg")
    bad = {"Positive/empty.jpg": "empty", "Negative/truncated.jpg": "truncated", "Negative/text.jpg": "not_image",
           "Positive/one_pixel.png": "too small", "Positive/bomb.png": "too large", "Negative/bomb.jpg": "too large",
           "Negative/locked.jpg": "unreadable", "Negative/dangling.jpg": "broken link",
           "Negative/loop_a.jpg": "broken link", "Negative/loop_b.jpg": "broken link"}
    # not part of the dataset at all: ignored (listed, never an error)
    (pos / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 100)
    (neg / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 100)
    (pos / "._foo.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    os.symlink("..", pos / "sub" / "back_up")  # a folder loop: Positive/sub/back_up -> Positive
    (root / ".ipynb_checkpoints").mkdir()  # a hidden folder in the root is no third class
    ignored = {"Positive/.DS_Store": "(ignored) hidden", "Negative/Thumbs.db": "(ignored) not an image file name",
               "Positive/._foo.jpg": "(ignored) hidden", "Positive/sub/back_up": "(ignored) folder already scanned"}
    return good, bad, ignored


@pytest.fixture
def bad_root(tiny_data, tmp_path, monkeypatch) -> tuple[Path, set[str], dict[str, str], dict[str, str]]:
    root = tmp_path / "dataset"
    shutil.copytree(tiny_data, root)
    good, bad, ignored = plant(root)
    locked = root / "Negative" / "locked.jpg"
    locked.chmod(0)
    try:
        locked.open("rb").close()
        readable = True  # root (as in containers) reads any file: simulate the refusal
    except PermissionError:
        readable = False
    if readable:
        real_open = open

        def no_permission(file, *args, **kwargs):
            if Path(file) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        # the full decode check reads bytes with fingerprints' open(); forked workers inherit this
        monkeypatch.setattr(fingerprints, "open", no_permission, raising=False)
    yield root, good, bad, ignored
    locked.chmod(0o644)  # so tmp_path can be cleaned up


def _skipped(run: Path) -> dict[str, str]:
    lines = (run / "skipped_files.txt").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines if not line.startswith("#"))


def test_training_uses_exactly_the_good_images_and_lists_the_rest(bad_root, tmp_path, monkeypatch):
    from crack_lightning.train import train

    root, good, bad, ignored = bad_root
    train(compose_cfg(tmp_path, root, ["backbone=custom_cnn"]))
    run = tmp_path / "run"
    listed = {line.split(",")[0] for line in (run / "splits.csv").read_text().splitlines()[1:]}
    assert listed == good
    assert (run / "metrics.json").is_file()  # trained, validated and tested to the end
    skipped = _skipped(run)
    assert set(skipped) == set(bad) | set(ignored)
    for path, why in {**bad, **ignored}.items():
        assert skipped[path].startswith(why), (path, skipped[path])

    # a second run reads the check from the cache, and the same choice stops before training
    # with the list when asked to
    cfg = compose_cfg(tmp_path / "strict", root, ["backbone=custom_cnn", "data.screening.on_bad_file=error",
                                                  f"paths.cache_dir={tmp_path / 'data' / 'cache'}"])
    monkeypatch.setattr(screening, "check_files", lambda *a, **k: pytest.fail("unchanged files checked again"))
    with pytest.raises(CrackLightningError) as err:
        train(cfg)
    message = str(err.value)
    assert message.splitlines()[0].startswith(f"{len(bad)} bad image file(s) under data.root=")
    assert "data.screening.on_bad_file=skip" in message.splitlines()[0]
    for path in bad:
        assert path in message
    assert not (tmp_path / "strict" / "run" / "splits.csv").exists()  # stopped before any split
    assert (tmp_path / "strict" / "run" / "skipped_files.txt").is_file()


def test_every_good_file_loads_as_rgb_in_the_jpeg_path(bad_root, tmp_path):
    root, good, _, _ = bad_root
    dm = CrackDataModule(str(root), DATA_CONFIG, split={"file": str(tmp_path / "run" / "splits.csv")},
                         loader={"num_workers": 0})
    dm.setup("fit")
    samples = [s for part in dm.splits.values() for s in part]
    assert {s.path.relative_to(root).as_posix() for s in samples} == good
    for s in samples:
        image, label = ImageListDataset([s], dm.val_dataset.transform)[0]
        assert image.shape == (3, 32, 32) and bool(image.isfinite().all())


def test_screening_is_cached_by_the_file_list(bad_root, tmp_path, monkeypatch):
    root, good, bad, _ = bad_root
    names = resolve_class_names(root, None)
    first = screening.screen(LabelledSet(root).scan(names), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("screening-*.json"))) == 1
    monkeypatch.setattr(screening, "check_files", lambda *a, **k: pytest.fail("checked again, unchanged files"))
    again = screening.screen(LabelledSet(root).scan(names), tmp_path / "cache")
    assert again.good == first.good and again.bad == first.bad
    monkeypatch.undo()
    (root / "Positive" / "cmyk.jpg").write_bytes(b"")  # a changed file: checked again
    third = screening.screen(LabelledSet(root).scan(names), tmp_path / "cache")
    assert (root / "Positive" / "cmyk.jpg").resolve() in third.bad
    assert len(list((tmp_path / "cache").glob("screening-*.json"))) == 2


def test_a_saved_split_listing_a_now_bad_file(tiny_data, tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(tiny_data, root)
    split_file = tmp_path / "run" / "splits.csv"
    split = {"strategy": "random", "file": str(split_file)}
    CrackDataModule(str(root), DATA_CONFIG, split=split, loader={"num_workers": 0}).setup("fit")
    victim = (root / split_file.read_text().splitlines()[1].split(",")[0])
    victim.write_bytes(victim.read_bytes()[:300])  # truncated after the split was made
    dm = CrackDataModule(str(root), DATA_CONFIG, split=split, loader={"num_workers": 0})
    dm.setup("fit")  # skip: left out of the saved split
    assert victim.resolve() not in {s.path for part in dm.splits.values() for s in part}
    assert sum(len(p) for p in dm.splits.values()) == 23
    strict = CrackDataModule(str(root), DATA_CONFIG, split=split, loader={"num_workers": 0},
                             screening={"on_bad_file": "error"})
    with pytest.raises(CrackLightningError, match=victim.name):
        strict.setup("fit")


def test_to_rgb_scales_16_bit_and_composites_alpha():
    deep = Image.fromarray(np.array([[0, 1000, 32768, 65535]], np.uint16))
    assert [p[0] for p in to_rgb(deep).getdata()] == [0, 4, 128, 255]  # scaled, not clipped at 255
    clear = Image.new("RGBA", (2, 2), (10, 20, 30, 0))  # invisible pixels: the background shows
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 255))).getpixel((0, 0)) == (10, 20, 30)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)


def test_header_checks_refuse_bombs_without_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    assert screening.header_problem(bomb, 32, 89_478_485).startswith("too large: the header claims 100000x100000")
    small = tmp_path / "small.png"
    Image.new("RGB", (31, 200)).save(small)
    assert screening.header_problem(small, 32, 10**8).startswith("too small: 31x200")
    assert screening.header_problem(small, 16, 10**8) is None  # data.screening.min_side is a setting
    assert screening.header_problem(tmp_path / "missing.jpg", 32, 10**8) is None  # left to the full check


# --- bad dataset shapes: one line each, naming the path or key and the fix ---------------


def _classes(root: Path, *names: str, images: int = 0) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(images):
            Image.new("RGB", (40, 40), (i, i, i)).save(root / name / f"{i}.png")
    return root


def test_missing_root(tmp_path):
    with pytest.raises(CrackLightningError, match=r"data.root=.*missing: no such folder.*make data"):
        resolve_class_names(tmp_path / "missing", None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CrackLightningError, match="is a file, not a folder"):
        resolve_class_names(tmp_path / "file", None)


def test_single_class(tmp_path):
    root = _classes(tmp_path / "one", "Positive")
    with pytest.raises(CrackLightningError, match=r"1 class folder.*at least two.*Add the missing"):
        resolve_class_names(root, None)
    wrapped = _classes(tmp_path / "outer" / "concrete", "Positive", "Negative").parent
    with pytest.raises(CrackLightningError, match=r"Did you mean data.root=.*concrete\?"):
        resolve_class_names(wrapped, None)


def test_more_classes_are_sorted_and_crack_found_by_name(tmp_path):
    """Three folders are three classes in ImageFolder's (sorted) order; the crack class is
    found by its name, or named with data.positive_classes (which must leave a class over)."""
    root = _classes(tmp_path / "three", "Positive", "Negative", "Spalling")
    assert resolve_class_names(root, None) == ["Negative", "Positive", "Spalling"]
    assert order_classes(["Positive", "Negative", "Spalling"], ["Positive", "Spalling"])[1] == [1, 2]
    with pytest.raises(CrackLightningError, match=r"every class .* is a crack class"):
        resolve_class_names(root, ["Positive", "Negative", "Spalling"])
    _classes(tmp_path / "hidden", "Positive", "Negative", ".ipynb_checkpoints", "__MACOSX")
    assert resolve_class_names(tmp_path / "hidden", None) == ["Negative", "Positive"]


def test_other_class_names(tmp_path):
    assert resolve_class_names(_classes(tmp_path / "a", "cracked", "intact"), None) == ["intact", "cracked"]
    root = _classes(tmp_path / "b", "with_crack", "background")
    with pytest.raises(CrackLightningError, match=r"cannot tell which.*Set data.positive_classes="):
        resolve_class_names(root, None)
    assert resolve_class_names(root, "with_crack") == ["background", "with_crack"]
    with pytest.raises(CrackLightningError, match=r"data.positive_classes=\['Positive'\]: Positive is not a class"):
        resolve_class_names(root, "Positive")


def test_empty_class_folder(tmp_path):
    root = _classes(tmp_path / "d", "Positive", images=2)
    _classes(root, "Negative")
    (root / "Negative" / ".DS_Store").write_bytes(b"x")  # hidden files are no images
    with pytest.raises(CrackLightningError, match=r"class folder 'Negative' has no images.*Add images"):
        scan_samples(root, resolve_class_names(root, None))


def test_a_class_whose_files_are_all_bad_counts_as_empty(tmp_path):
    root = _classes(tmp_path / "d", "Positive", images=2)
    _classes(root, "Negative")
    (root / "Negative" / "a.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(root / "Negative" / "b.png")
    dm = CrackDataModule(str(root), DATA_CONFIG, split={"file": str(tmp_path / "run" / "splits.csv")},
                         loader={"num_workers": 0})
    with pytest.raises(CrackLightningError, match=r"class folder 'Negative' has no usable images.*skipped_files"):
        dm.prepare_data()
    assert "Negative/a.jpg\tempty" in (tmp_path / "run" / "skipped_files.txt").read_text()


def test_on_bad_file_must_be_skip_or_error(tiny_data):
    with pytest.raises(CrackLightningError, match=r"^data.screening.on_bad_file=ignore: choose skip or error\.$"):
        CrackDataModule(str(tiny_data), DATA_CONFIG, screening={"on_bad_file": "ignore"})
