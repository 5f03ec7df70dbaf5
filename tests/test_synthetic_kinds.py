"""The synthetic generator's other kinds: multiclass defects and an SDNET2018-like set (fast)."""
from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
from omegaconf import OmegaConf

from crack_lightning import CrackLightningError
from crack_lightning.cli.synth import main
from crack_lightning.data.synthetic.generate import NotGeneratedHere, class_folders_of, generate

PHOTO = re.compile(r"(\d+)-\d+\.jpg$")  # SDNET2018's names: <photo>-<patch>.jpg
SDNET = ["D/CD", "D/UD", "P/CP", "P/UP", "W/CW", "W/UW"]


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(root) -> list[str]:
    return [rel for rel in _tree(root) if rel.endswith(".jpg")]


def test_multiclass_layout_default_and_chosen_classes(tmp_path):
    r = generate(tmp_path / "four", per_class=3, size=32, kind="multiclass")
    assert r["counts"] == {"crack": 3, "joint": 3, "stain": 3, "clean": 3}
    assert sorted(p.name for p in (tmp_path / "four").iterdir()) == ["clean", "crack", "joint", "stain", "synthetic.json"]
    assert sorted(p.name for p in (tmp_path / "four" / "joint").iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg"]
    r = generate(tmp_path / "three", per_class=3, size=32, kind="multiclass", classes=["crack", "stain", "clean"])
    assert r["counts"] == {"crack": 3, "stain": 3, "clean": 3}
    meta = json.loads((tmp_path / "three" / "synthetic.json").read_text())
    assert meta["kind"] == "multiclass" and meta["classes"] == ["crack", "stain", "clean"] and meta["complete"]
    # a class is seeded by its name, not its place in the list: the same pictures in either set
    assert (tmp_path / "three/stain/00002.jpg").read_bytes() == (tmp_path / "four/stain/00002.jpg").read_bytes()


def test_binary_marker_keeps_its_old_keys(tmp_path):
    # existing datasets must not be regenerated: no new keys for kind=binary
    generate(tmp_path / "b", per_class=1, size=32)
    assert set(json.loads((tmp_path / "b" / "synthetic.json").read_text())) == {"version", "per_class", "seed", "size", "complete"}


def test_sdnet_layout_photos_and_crack_share(tmp_path):
    r = generate(tmp_path / "sd", per_class=40, size=32, kind="sdnet", tiles=3)
    root = tmp_path / "sd"
    images = _images(root)
    assert sorted({rel.rsplit("/", 1)[0] for rel in images}) == SDNET
    assert r["counts"] == {f: sum(rel.startswith(f + "/") for rel in images) for f in SDNET}
    for d in "DPW":
        cracked, total = r["counts"][f"{d}/C{d}"], r["counts"][f"{d}/C{d}"] + r["counts"][f"{d}/U{d}"]
        assert total == 40 and cracked == 6  # round(0.15 * 40)
    domains_of = defaultdict(set)
    for rel in images:
        domains_of[PHOTO.search(rel).group(1)].add(rel.split("/")[0])
    assert all(len(ds) == 1 for ds in domains_of.values())  # a photo is one surface
    assert len(domains_of) == 3 * 5  # ceil(40 / 9) photos per domain, ids unique across the set
    r = generate(tmp_path / "share", per_class=100, size=32, kind="sdnet", crack_share=0.3)
    assert [r["counts"][f"{d}/C{d}"] for d in "DPW"] == [30, 30, 30]


def test_same_parameters_same_bytes_for_any_workers(tmp_path):
    for kind, n in (("multiclass", 3), ("sdnet", 20)):
        a = generate(tmp_path / f"{kind}1", per_class=n, seed=5, size=32, kind=kind, workers=1)
        generate(tmp_path / f"{kind}2", per_class=n, seed=5, size=32, kind=kind, workers=2)
        assert _tree(tmp_path / f"{kind}1") == _tree(tmp_path / f"{kind}2")
        assert a["generated"] and not generate(tmp_path / f"{kind}1", per_class=n, seed=5, size=32, kind=kind)["generated"]
        other = generate(tmp_path / f"{kind}3", per_class=n, seed=6, size=32, kind=kind)
        assert other["counts"] == a["counts"] and _tree(tmp_path / f"{kind}3") != _tree(tmp_path / f"{kind}1")


def test_regeneration_removes_only_its_own_files_and_refuses_foreign_ones(tmp_path):
    root = tmp_path / "ds"
    generate(root, per_class=2, size=32)  # binary
    generate(root, per_class=2, size=32, kind="multiclass", classes=["crack", "spalling"])
    assert sorted(p.name for p in root.iterdir()) == ["crack", "spalling", "synthetic.json"]  # no empty Positive/
    generate(root, per_class=10, size=32, kind="sdnet")
    assert sorted(p.name for p in root.iterdir()) == ["D", "P", "W", "synthetic.json"]
    assert len(_images(root)) == 30
    generate(root, per_class=10, size=32, kind="sdnet", crack_share=0.4)  # other patches are cracked
    assert len(_images(root)) == 30 and sum("/C" in rel for rel in _images(root)) == 12
    (root / "D" / "CD" / "mine.jpg").write_bytes(b"not the generator's")
    before = _tree(root)
    with pytest.raises(NotGeneratedHere, match="did not write"):
        generate(root, per_class=3, size=32, kind="multiclass")
    assert _tree(root) == before


@pytest.mark.parametrize("kwargs, key", [
    ({"kind": "trinary"}, "kind="),
    ({"kind": "multiclass", "classes": ["crack", "rust"]}, "classes"),
    ({"kind": "multiclass", "classes": ["crack"]}, "classes"),
    ({"kind": "multiclass", "classes": ["crack", "crack"]}, "classes"),
    ({"classes": ["crack", "stain"]}, "classes"),
    ({"kind": "sdnet", "crack_share": 0}, "crack_share"),
    ({"kind": "sdnet", "crack_share": 1.0}, "crack_share"),
    ({"kind": "sdnet", "crack_share": "many"}, "crack_share"),
    ({"kind": "multiclass", "crack_share": 0.2}, "crack_share"),
    ({"kind": "sdnet", "layout": "scenes"}, "layout"),
    ({"kind": "sdnet", "per_class": 1}, "per_class"),
])
def test_bad_parameters_are_one_line_errors(tmp_path, kwargs, key):
    with pytest.raises(CrackLightningError) as e:
        generate(tmp_path / "bad", **{"per_class": 2, "size": 32, **kwargs})
    assert key in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_class_folders_are_known_before_generating(tmp_path):
    for synthetic in ({"per_class": 2}, {"per_class": 2, "kind": "multiclass", "classes": "crack,clean"},
                      {"per_class": 8, "kind": "sdnet", "crack_share": 0.3}):
        folders = class_folders_of(**synthetic)
        assert list(generate(tmp_path / str(len(folders)), size=32, **synthetic)["counts"]) == folders


def test_hydra_config_passes_keywords(tmp_path):
    # data.synthetic reaches generate(root, **dict(cfg)): lists arrive as ListConfig
    synthetic = OmegaConf.create({"per_class": 2, "seed": 0, "size": 32, "kind": "multiclass",
                                  "classes": ["crack", "stain", "clean"]})
    assert generate(tmp_path / "h", **dict(synthetic))["counts"] == {"crack": 2, "stain": 2, "clean": 2}


def test_cli_kinds(tmp_path, capsys):
    out = tmp_path / "mc"
    assert main(["--out", str(out), "--kind", "multiclass", "--classes", "crack,stain,clean",
                 "--per-class", "2", "--size", "32"]) == 0
    assert "generated 2/class x 3 classes (crack, stain, clean)" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "sd"), "--kind", "sdnet", "--per-class", "20", "--crack-share", "0.25",
                 "--size", "32"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "20/domain x 3 domains, 15 of 60 cracked" in line
    assert main(["--out", str(tmp_path / "x"), "--kind", "multiclass", "--classes", "crack,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["defects", "sdnet"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"crack_lightning.data.synthetic.{name}"))
    assert result.attempted > 0 and result.failed == 0, result
