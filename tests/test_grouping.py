"""Grouped splits on patches cut from shared scenes: no leak where a random split leaks."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from crack_lightning import CrackLightningError
from crack_lightning.data import CrackDataModule
from crack_lightning.data.imagefolder import Sample
from crack_lightning.data.quality.grouping import border_profiles, group_ids
from crack_lightning.data.settings import GroupingSettings
from crack_lightning.data.synthetic.scenes import read_scenes, render_scene, split_leak
from crack_lightning.data.splits import grouped_split
from crack_lightning.data.synthetic.generate import generate

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory):
    """~1,100 patches cut from 3x3-patch scenes, with the scenes' ground truth."""
    root = tmp_path_factory.mktemp("scenes")
    generate(root, per_class=550, seed=0, layout="scenes", tiles=3, workers=2)
    return root


def _split_rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _make_split(root, tmp_path, strategy):
    split_file = tmp_path / strategy / "splits.csv"
    dm = CrackDataModule(str(root), DATA_CONFIG, split={"strategy": strategy, "file": str(split_file)},
                         cache={"dir": str(tmp_path / "cache")}, loader={"num_workers": 0})
    dm.prepare_data()
    dm.setup("fit")
    return dm, split_file


def test_scenes_layout_has_ground_truth_and_both_classes_per_photo(scene_data):
    truth = read_scenes(scene_data)
    assert len(truth) == 1100
    assert sum(p.startswith("Positive/") for p in truth) == 550
    classes_per_scene = defaultdict(set)
    for path, (scene, _, _) in truth.items():
        classes_per_scene[scene].add(path.split("/")[0])
    mixed = sum(len(c) == 2 for c in classes_per_scene.values())
    assert mixed >= 0.3 * len(classes_per_scene)  # many photos give both classes, as in the real set
    assert len(classes_per_scene) >= 100


def test_border_matching_recovers_cut_neighbours():
    """Cut one scene into patches, shuffle them: matching edges puts the scene back together."""
    rgb, _ = render_scene(np.random.default_rng(7), tiles=4, size=64)
    tiles = [rgb[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] for r in range(4) for c in range(4)]
    other, _ = render_scene(np.random.default_rng(8), tiles=4, size=64)
    tiles += [other[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] for r in range(4) for c in range(4)]
    order = np.random.default_rng(0).permutation(len(tiles))
    borders = np.stack([border_profiles(tiles[k], bin=8) for k in order])
    labels = group_ids(borders, ratio=0.5)
    scene_of = order // 16
    for g in np.unique(labels):  # no group mixes the two photos
        assert len(set(scene_of[labels == g])) == 1
    assert len(np.unique(labels)) <= 4  # each photo in at most a couple of groups


def test_grouped_split_keeps_groups_whole_stratified_and_leak_free(scene_data, tmp_path):
    dm, split_file = _make_split(scene_data, tmp_path, "grouped")
    rows = _split_rows(split_file)
    assert len(rows) == 1100 and set(rows[0]) == {"path", "label", "split", "group"}
    split_of_group = defaultdict(set)
    for row in rows:
        split_of_group[row["group"]].add(row["split"])
    assert all(len(s) == 1 for s in split_of_group.values())  # no group spans two splits
    assert len(split_of_group) >= 100
    overall = sum(r["label"] == "Positive" for r in rows) / len(rows)
    for name, part in dm.splits.items():
        share = sum(s.label for s in part) / len(part)
        assert abs(share - overall) <= 0.01, (name, share, overall)
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert abs(sizes["test"] - 110) <= 15 and abs(sizes["val"] - 110) <= 15, sizes
    info = __import__("json").loads(split_file.with_suffix(".json").read_text())
    assert info["strategy"] == "grouped" and info["groups"] == len(split_of_group)

    grouped = split_leak(scene_data, {r["path"]: r["split"] for r in rows})
    _, random_file = _make_split(scene_data, tmp_path, "random")
    random = split_leak(scene_data, {r["path"]: r["split"] for r in _split_rows(random_file)})
    # A random split puts a direct neighbour of most test patches into training; the
    # grouped split keeps them out (a rare border the matcher could not pin down aside).
    assert random["neighbour_in_train"] >= 0.6, random
    assert grouped["neighbour_in_train"] <= 0.05, grouped
    assert grouped["photo_in_train"] < random["photo_in_train"], (grouped, random)


def test_saved_split_records_strategy_and_refuses_the_other(scene_data, tmp_path):
    _, split_file = _make_split(scene_data, tmp_path, "random")
    rows = _split_rows(split_file)
    assert set(rows[0]) == {"path", "label", "split"}
    dm = CrackDataModule(str(scene_data), DATA_CONFIG, split={"strategy": "grouped", "file": str(split_file)},
                         loader={"num_workers": 0})
    with pytest.raises(CrackLightningError, match="data.split.strategy=random"):
        dm.setup("fit")


def test_groups_are_cached_by_file_list(scene_data, tmp_path, monkeypatch):
    _make_split(scene_data, tmp_path, "grouped")
    assert len(list((tmp_path / "cache").glob("groups-*.npy"))) == 1
    import crack_lightning.data.quality.grouping as grouping

    monkeypatch.setattr(grouping, "group_files", lambda *a, **k: pytest.fail("groups recomputed"))
    (tmp_path / "grouped" / "splits.csv").unlink()
    _make_split(scene_data, tmp_path, "grouped")  # same files: cache hit


def test_one_decode_serves_the_image_check_and_the_grouping(scene_data, tmp_path, monkeypatch):
    """A first grouped run decodes each image once: the grouping reads the fingerprints (with the
    border profiles) of the image check's pass, and groups exactly as its own decode would."""
    import crack_lightning.data.quality.grouping as grouping

    monkeypatch.setattr(grouping, "fingerprint_files", lambda *a, **k: pytest.fail("decoded again to group"))
    dm, _ = _make_split(scene_data, tmp_path, "grouped")
    monkeypatch.undo()
    assert not dm.preparation.screened.fingerprints, "dropped once the groups are made"
    [cached] = (tmp_path / "cache").glob("groups-*.npy")
    paths = [s.path for s in dm.preparation.screened.good]
    assert np.array_equal(np.load(cached), grouping.group_files(paths, GroupingSettings()))


def test_grouped_split_is_deterministic_and_refuses_too_few_groups():
    samples = [Sample(f"{i}.jpg", i % 2) for i in range(400)]
    groups = np.arange(400) // 4
    a = grouped_split(samples, groups, (0.8, 0.1, 0.1), seed=0)
    assert a == grouped_split(samples, groups, (0.8, 0.1, 0.1), seed=0)
    assert a != grouped_split(samples, groups, (0.8, 0.1, 0.1), seed=1)
    with pytest.raises(CrackLightningError, match="data.split.strategy=random"):
        grouped_split(samples[:8], np.zeros(8), (0.8, 0.1, 0.1), seed=0)
