"""Labelled sets beyond two flat folders: a class map over nested folders (SDNET2018's layout,
with domains and photo groups), manifests with and without split / group columns, and the
class weights of an imbalanced set. The images are drawn here, unlike the generator's."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import compose_cfg, refused, run_train_py
from crack_lightning import CrackLightningError
from crack_lightning.data.labelled import LabelledSet, read_manifest

DOMAINS = {"D": 95, "P": 135, "W": 175}  # mean grey of each surface


def _patch(rng, base: int, crack: bool, size: int = 40, depth: float = 0.3) -> Image.Image:
    """A noisy surface; a crack is a dark tortuous vertical streak."""
    a = rng.normal(base, 18, (size, size, 3)).clip(0, 255)
    if crack:
        x = size // 2
        for y in range(size):
            x = int(np.clip(x + rng.integers(-1, 2), 2, size - 3))
            a[y, x - 1:x + 2] *= depth
    return Image.fromarray(a.astype(np.uint8))


def sdnet_like(root: Path, photos: int = 6, patches: int = 6, cracked: int = 2, seed: int = 0) -> Path:
    """``D/{CD,UD}``, ``P/{CP,UP}``, ``W/{CW,UW}`` of ``<photo>-<patch>.jpg``, photo numbers
    shared by all the patches of one photo (cracked and not)."""
    rng = np.random.default_rng(seed)
    photo = 7000
    for domain, base in DOMAINS.items():
        for _ in range(photos):
            photo += 1
            shade = int(rng.integers(-20, 20))  # a photo's patches share its light
            for k in range(patches):
                folder = root / domain / (("C" if k < cracked else "U") + domain)
                folder.mkdir(parents=True, exist_ok=True)
                _patch(rng, base + shade, k < cracked).save(folder / f"{photo}-{k}.jpg", quality=92)
    return root


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_sdnet_layout_trains_with_its_class_map_groups_and_domains(tmp_path):
    """`train.py data=sdnet2018`: six nested folders become crack / no_crack, a photo never spans
    two splits, and every test metric is there per surface (D, P, W)."""
    root = sdnet_like(tmp_path / "SDNET2018")
    run = tmp_path / "run"
    result = run_train_py(["debug=fast", "backbone=custom_cnn", "data=sdnet2018", f"data.root={root}",
                           f"paths.output_dir={run}", f"paths.log_dir={tmp_path / 'logs'}",
                           f"paths.data_dir={tmp_path / 'data'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(run / "splits.csv")
    assert {r["label"] for r in rows} == {"crack", "no_crack"} and len(rows) == 3 * 6 * 6
    assert all(r["domain"] == r["path"].split("/")[0] for r in rows)
    split_of_photo = defaultdict(set)
    for r in rows:
        split_of_photo[r["path"].split("/")[-1].split("-")[0]].add(r["split"])
    assert len(split_of_photo) == 18 and all(len(s) == 1 for s in split_of_photo.values())
    assert json.loads((run / "splits.json").read_text())["grouping"] == {"pattern": r"(\d+)-\d+\.jpg$"}
    metrics = json.loads((run / "metrics.json").read_text())
    tested = {r["domain"] for r in rows if r["split"] == "test"}
    for domain in tested:
        for key in ("acc", "precision", "recall", "f1", "recall_at_threshold", "missed_cracks", "images"):
            assert f"test/domain/{domain}/{key}" in metrics, sorted(metrics)
    assert sum(metrics[f"test/domain/{d}/images"] for d in tested) == metrics["test/images"]
    per_domain = json.loads((run / "domain_metrics.json").read_text())
    assert set(per_domain) == tested


def _manifest(root: Path, out: Path, columns: list[str], absolute: bool = False) -> Path:
    """A manifest of ``root``'s SDNET-like images (paths relative to the manifest's folder, or absolute)."""
    rows = []
    for path in sorted(root.rglob("*.jpg")):
        photo = int(path.stem.split("-")[0])
        rows.append({"path": path.as_posix() if absolute else path.relative_to(out.parent).as_posix(),
                     "label": "crack" if path.parent.name.startswith("C") else "no_crack",
                     "group": f"photo{photo}", "split": ("test", "val", "train", "train", "train", "train")[photo % 6],
                     "domain": path.parts[-3]})
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return sdnet_like(tmp_path_factory.mktemp("manifest_data") / "images")


def test_a_manifest_split_column_is_used_as_is(images, tmp_path):
    from crack_lightning.train import train

    manifest = _manifest(images, images.parent / "with_split.csv", ["path", "label", "split", "domain"])
    train(compose_cfg(tmp_path, images, [f"data.manifest={manifest}", "backbone=custom_cnn", "trainer.max_epochs=1", "finetune=full",
                                         f"paths.output_dir={tmp_path / 'run'}"]))
    given = {r["path"]: r["split"] for r in _rows(manifest)}
    saved = {r["path"]: r["split"] for r in _rows(tmp_path / "run" / "splits.csv")}
    assert saved == given
    assert json.loads((tmp_path / "run" / "splits.json").read_text())["strategy"] == "manifest"
    assert any(k.startswith("test/domain/") for k in json.loads((tmp_path / "run" / "metrics.json").read_text()))


def test_a_manifest_group_column_replaces_border_matching(images, tmp_path):
    from crack_lightning.train import train

    manifest = _manifest(images, images.parent / "with_group.csv", ["path", "label", "group"])
    train(compose_cfg(tmp_path, images, [f"data.manifest={manifest}", "backbone=custom_cnn", "trainer.max_epochs=1", "finetune=full",
                                         f"paths.output_dir={tmp_path / 'run'}"]))
    group_of = {r["path"]: r["group"] for r in _rows(manifest)}
    splits_of_group = defaultdict(set)
    for r in _rows(tmp_path / "run" / "splits.csv"):
        splits_of_group[group_of[r["path"]]].add(r["split"])
    assert len(splits_of_group) == 18 and all(len(s) == 1 for s in splits_of_group.values())
    assert json.loads((tmp_path / "run" / "splits.json").read_text())["grouping"] == {"column": "group"}


def test_a_manifest_without_split_or_group_is_split_by_the_run(images, tmp_path):
    from crack_lightning.train import train

    lists = tmp_path / "lists"  # elsewhere: its paths are absolute
    lists.mkdir()
    manifest = _manifest(images, lists / "plain.csv", ["path", "label"], absolute=True)
    labelled = LabelledSet(tmp_path / "unused", manifest=manifest)
    names, positive = labelled.classes()
    assert names == ["no_crack", "crack"] and positive == [1]
    scanned = labelled.scan(names)
    assert len(scanned.samples) == 108 and scanned.groups is None and scanned.splits is None
    assert all(s.path.is_file() and s.domain is None for s in scanned.samples)
    train(compose_cfg(tmp_path, images, [f"data.manifest={manifest}", "backbone=custom_cnn", "trainer.max_epochs=1",
                                         "finetune=full", "data.split.strategy=random"]))
    info = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert info["strategy"] == "random" and sum(part["images"] for part in info["splits"].values()) == 108
    assert {r["path"] for r in _rows(tmp_path / "run" / "splits.csv")} == {r["path"] for r in _rows(manifest)}


def test_parquet_manifests_read_like_csv(images, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_manifest = _manifest(images, images.parent / "for_parquet.csv", ["path", "label", "group", "split", "domain"])
    rows = _rows(csv_manifest)
    parquet = images.parent / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    assert [{k: v for k, v in r.items() if k != "line"} for r in read_manifest(parquet)] == rows


def test_manifest_and_class_map_mistakes_are_one_line(images, tmp_path):
    bad = tmp_path / "bad.csv"
    for text, words in (("path,class\na.jpg,crack\n", "lacks the column(s) label"),
                        ("path,label,split\na.jpg,crack,training\n", "split='training'"),
                        ("path,label,split\na.jpg,crack,train\nb.jpg,no_crack,\n", "no split, while other rows")):
        bad.write_text(text)
        with pytest.raises(CrackLightningError, match=words.replace("(", r"\(").replace(")", r"\)")):
            read_manifest(bad)
    first = sorted(images.rglob("*.jpg"))[0].relative_to(images).as_posix()
    twice = images.parent / "twice.csv"
    twice.write_text(f"path,label\nimages/{first},crack\nimages/{first},no_crack\n")
    with pytest.raises(CrackLightningError, match="listed twice, as crack and no_crack"):
        LabelledSet(tmp_path, manifest=twice).scan(["no_crack", "crack"])
    with pytest.raises(CrackLightningError, match="D/CD/x lies inside D/CD"):
        LabelledSet(images, class_map={"D/CD": "crack", "D/CD/x": "no_crack"})
    with pytest.raises(CrackLightningError, match="Q/CQ is no folder under data.root"):
        LabelledSet(images, class_map={"Q/CQ": "crack", "D/UD": "no_crack"}).scan(["no_crack", "crack"])
    with pytest.raises(CrackLightningError, match="both set"):
        LabelledSet(images, class_map={"D/CD": "crack"}, manifest=twice)


def test_a_missing_manifest_file_is_refused_before_anything_is_written(tmp_path):
    result = run_train_py(["debug=fast", f"data.manifest={tmp_path / 'data' / 'nope.csv'}",
                           f"paths.output_dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path / 'logs'}"])
    refused(result, "data.manifest=", "no such file")


def test_auto_class_weights_raise_crack_recall_on_an_imbalanced_set(tmp_path):
    """10 % cracks, faint ones: unweighted, the model calls every test image sound at 0.5; with
    model.class_weights=auto (same seed, same split) it finds some of them. Measured on three
    such sets (seeds 1, 2; 400 and 600 images): recall 0 -> 0.42, 0.83, 0.13."""
    from crack_lightning.train import train

    rng = np.random.default_rng(1)
    root = tmp_path / "imbalanced"
    for name, n, crack in (("crack", 60, True), ("no_crack", 540, False)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            _patch(rng, int(rng.integers(90, 170)), crack, size=32, depth=0.85).save(root / name / f"{i}.png")
    recall = {}
    for weights in ("none", "auto"):
        out = tmp_path / weights
        train(compose_cfg(out, root, [
            "backbone=custom_cnn", f"model.class_weights={weights}", "finetune=full", "model.lr=1e-3",
            "data.split.strategy=random", "data.split.fractions=[0.6,0.2,0.2]", "callbacks.test_report=null",
            "callbacks.error_gallery=null", "callbacks.augmentation_preview=null"]))
        recall[weights] = json.loads((out / "run" / "metrics.json").read_text())["test/recall"]
    assert recall["auto"] > recall["none"], recall
