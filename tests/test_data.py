"""Splits are deterministic, stratified, disjoint, saved and reused; class folders are checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crack_lightning import CrackLightningError
from crack_lightning.data import CrackDataModule
from crack_lightning.data.imagefolder import Sample, resolve_class_names, scan_samples
from crack_lightning.data.splits import read_splits, stratified_split, write_splits

DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.25,) * 3}
NO_WORKERS = {"num_workers": 0}


def fake_samples(n_pos=300, n_neg=700) -> list[Sample]:
    return [Sample(Path(f"/d/P/{i:05d}.jpg"), 1) for i in range(n_pos)] + [
        Sample(Path(f"/d/N/{i:05d}.jpg"), 0) for i in range(n_neg)
    ]


def test_split_is_deterministic_disjoint_complete_and_stratified():
    samples = fake_samples()
    a = stratified_split(samples, (0.8, 0.1, 0.1), seed=0)
    b = stratified_split(list(samples), (0.8, 0.1, 0.1), seed=0)
    c = stratified_split(samples, (0.8, 0.1, 0.1), seed=1)
    assert a == b
    assert a["test"] != c["test"]
    sets = {k: {s.path for s in v} for k, v in a.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert set().union(*sets.values()) == {s.path for s in samples}
    assert [len(a[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    for part in a.values():  # 30 % cracks in every split
        assert sum(s.label for s in part) / len(part) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.2), (0.9, 0.1, 0.0), (0.5, 0.5)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(CrackLightningError, match="data.split.fractions"):
        stratified_split(fake_samples(), fractions, seed=0)


def test_splits_csv_round_trip(tiny_data, tmp_path):
    names = resolve_class_names(tiny_data, None)
    splits = stratified_split(scan_samples(tiny_data, names), (0.6, 0.2, 0.2), seed=3)
    write_splits(tmp_path / "splits.csv", splits, tiny_data, names)
    assert (tmp_path / "splits.csv").read_text().splitlines()[0] == "path,label,split"
    assert read_splits(tmp_path / "splits.csv", tiny_data, names) == splits


def test_datamodule_reuses_saved_split(tiny_data, tmp_path):
    split_file = tmp_path / "run" / "splits.csv"
    dm = CrackDataModule(str(tiny_data), DATA_CONFIG, split={"seed": 0, "file": str(split_file)}, loader=NO_WORKERS)
    dm.setup("fit")
    first = split_file.read_text()
    # a different seed would split differently, but a saved split wins (resume)
    again = CrackDataModule(str(tiny_data), DATA_CONFIG, split={"seed": 1, "file": str(split_file)}, loader=NO_WORKERS)
    again.setup("fit")
    assert again.splits == dm.splits and split_file.read_text() == first
    fresh = CrackDataModule(str(tiny_data), DATA_CONFIG, split={"seed": 1, "file": str(tmp_path / "x.csv")},
                            loader=NO_WORKERS)
    fresh.setup("fit")
    assert fresh.splits != dm.splits

    image, label = dm.train_dataset[0]
    assert image.shape == (3, 224, 224) and label in (0, 1)


def test_any_two_class_names_work_and_crack_is_label_one(tiny_data, tmp_path):
    root = tmp_path / "renamed"
    shutil.copytree(tiny_data / "Positive", root / "with_crack")
    shutil.copytree(tiny_data / "Negative", root / "background")
    with pytest.raises(CrackLightningError, match="data.positive_class"):
        resolve_class_names(root, None)
    names = resolve_class_names(root, "with_crack")
    assert names == ["background", "with_crack"]
    samples = scan_samples(root, names)
    assert all((s.label == 1) == (s.path.parent.name == "with_crack") for s in samples)


def test_dataset_shape_problems_have_clear_messages(tmp_path):
    with pytest.raises(CrackLightningError, match="no such folder"):
        resolve_class_names(tmp_path / "missing", None)
    (tmp_path / "one" / "Positive").mkdir(parents=True)
    with pytest.raises(CrackLightningError, match="at least two"):
        resolve_class_names(tmp_path / "one", None)
    (tmp_path / "one" / "Negative").mkdir()
    names = resolve_class_names(tmp_path / "one", None)
    with pytest.raises(CrackLightningError, match="has no images"):
        scan_samples(tmp_path / "one", names)


def test_links_into_the_other_class_never_relabel_its_images(tiny_data, tmp_path):
    """A link from Negative/ to a sub-folder or a file of Positive/ (walked first or not): the
    images stay Positive, the links are left out; a link to a folder outside is followed."""
    root = tmp_path / "linked"
    shutil.copytree(tiny_data / "Negative", root / "Negative")
    (root / "Positive" / "site").mkdir(parents=True)
    for image in sorted((tiny_data / "Positive").glob("*.jpg")):
        shutil.copy(image, root / "Positive" / "site" / image.name)
    (root / "Negative" / "a_link").symlink_to(root / "Positive" / "site")  # sorts before the real folder
    (root / "Negative" / "b.jpg").symlink_to(root / "Positive" / "site" / "00001.jpg")
    (root / "Negative" / "elsewhere").symlink_to(tiny_data / "Negative")  # outside: followed
    samples = scan_samples(root, ["Negative", "Positive"])
    positives = {s.path.name for s in samples if s.label == 1}
    assert positives == {p.name for p in (tiny_data / "Positive").glob("*.jpg")}
    assert not any("a_link" in s.path.parts or s.path.name == "b.jpg" for s in samples)
    assert sum("elsewhere" in s.path.parts and s.label == 0 for s in samples) == 12  # the originals, by link
    assert sum(s.label == 0 for s in samples) == 24
