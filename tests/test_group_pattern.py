"""Grouped by file name: ``data.split.group_pattern`` takes the photo id from each path (SDNET2018's
``7001-115.jpg`` is patch 115 of photo 7001), so no photo spans two splits -- without border matching."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.data import CrackDataModule
from crack_lightning.data.settings import SplitSettings
from tests.conftest import compose_cfg, refused, run_train_py

PATTERN = r"(\d+)-\d+\.jpg$"
DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """20 photos of 4 patches each, both classes in most photos (as a wall photo gives both)."""
    root = tmp_path_factory.mktemp("sdnet_like")
    rng = np.random.default_rng(0)
    for photo in range(7001, 7021):
        for patch in range(4):
            cls = "Positive" if (photo + patch) % 3 == 0 else "Negative"
            (root / cls).mkdir(exist_ok=True)
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{photo}-{100 + patch}.jpg", quality=90)
    return root


def test_no_photo_spans_two_splits(tmp_path, photos):
    split_file = tmp_path / "splits.csv"
    dm = CrackDataModule(str(photos), DATA_CONFIG, split={"strategy": "grouped", "group_pattern": PATTERN,
                                                          "file": str(split_file), "fractions": [0.6, 0.2, 0.2]},
                         cache={"enabled": False}, loader={"num_workers": 0})
    dm.prepare_data()
    dm.setup("fit")
    with split_file.open() as f:
        rows = list(csv.DictReader(f))
    split_of = {}
    for row in rows:
        photo = re.search(PATTERN, row["path"]).group(1)
        assert split_of.setdefault(photo, row["split"]) == row["split"], f"photo {photo} in two splits"
    assert len(rows) == 80 and len(split_of) == 20 and set(split_of.values()) == {"train", "val", "test"}
    assert len({row["group"] for row in rows}) == 20  # one group per photo, written with the split
    info = json.loads(split_file.with_suffix(".json").read_text())
    assert info["grouping"] == {"pattern": PATTERN} and info["groups"] == 20


def test_a_path_the_pattern_misses_is_named(tmp_path, photos):
    dm = CrackDataModule(str(photos), DATA_CONFIG, split={"strategy": "grouped", "group_pattern": r"(\d+)_\d+\.jpg$",
                                                          "file": str(tmp_path / "splits.csv")},
                         cache={"enabled": False}, loader={"num_workers": 0})
    with pytest.raises(CrackLightningError, match=r"80 of 80 image paths do not match it \(e.g. Negative/7001-100.jpg"):
        dm.prepare_data()
    assert not (tmp_path / "splits.csv").exists()


@pytest.mark.parametrize("settings, message", [
    ({"strategy": "grouped", "group_pattern": "(\\d+"}, "data.split.group_pattern=(\\d+: not a regular expression"),
    ({"strategy": "grouped", "group_pattern": "\\d+-"}, "needs a group ( ... ) that captures the photo id"),
    ({"strategy": "random", "group_pattern": PATTERN}, "set data.split.strategy=grouped too"),
])
def test_a_pattern_that_cannot_group_is_refused_in_one_line(settings, message):
    with pytest.raises(CrackLightningError) as err:
        SplitSettings.from_config(settings)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_pattern_as_typed_on_the_command_line(tmp_path, photos):
    """Through train.py: the README's quoting composes, and a bad pattern is refused before torch."""
    base = ["debug=fast", f"data.root={photos}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}",
            "data.split.strategy=grouped"]
    job = run_train_py([*base, f"data.split.group_pattern='{PATTERN}'", "--cfg", "job"])
    assert job.returncode == 0 and f"group_pattern: {PATTERN}" in job.stdout, job.stderr
    refused(run_train_py([*base, "data.split.group_pattern='no-group'"]), "data.split.group_pattern=no-group")
    cfg = compose_cfg(tmp_path, photos, ["data.split.strategy=grouped", f"data.split.group_pattern='{PATTERN}'"])
    assert cfg.data.split.group_pattern == PATTERN
