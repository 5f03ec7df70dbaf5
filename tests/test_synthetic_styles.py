"""The synthetic generator's surface styles (domains): concrete as ever, asphalt, painted, low_light (fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.cli.synth import main
from crack_lightning.data.labelled import data_classes
from crack_lightning.data.synthetic.generate import class_folders_of, generate
from crack_lightning.data.synthetic.styles import STYLE_NAMES
from tests.conftest import compose_cfg

OTHERS = [s for s in STYLE_NAMES if s != "concrete"]


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _surface(root) -> dict[str, float]:
    """The bare surfaces (Negative/): mean brightness, fine texture relative to it (median
    |Laplacian| / mean: grain, noise) and colour (blue / red)."""
    rgb = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in sorted((root / "Negative").glob("*.jpg"))]
    lum = [a.mean(2) for a in rgb]
    lap = [np.median(np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:])) for a in lum]
    mean = float(np.mean([a.mean() for a in lum]))
    return {"mean": mean, "texture": float(np.mean(lap)) / mean,
            "blue": float(np.mean([a[..., 2].mean() / a[..., 0].mean() for a in rgb]))}


def test_default_style_is_the_unstyled_generator(tmp_path):
    generate(tmp_path / "plain", per_class=3, seed=2, size=64)
    r = generate(tmp_path / "concrete", per_class=3, seed=2, size=64, style="concrete")
    assert _tree(tmp_path / "plain") == _tree(tmp_path / "concrete")  # the marker too: old folders stay complete
    assert r["style"] == "concrete" and "style" not in json.loads((tmp_path / "concrete" / "synthetic.json").read_text())
    assert generate(tmp_path / "plain", per_class=3, seed=2, size=64, style=None)["generated"] is False


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    """Every style, 6 images per class at 96 px, seed 0."""
    base = tmp_path_factory.mktemp("styles")
    for style in STYLE_NAMES:
        generate(base / style, per_class=6, seed=0, size=96, style=style)
    return base


@pytest.mark.parametrize("style", OTHERS)
def test_each_style_is_deterministic_and_marked(styled, tmp_path, style):
    assert class_folders_of(style=style) == ["Positive", "Negative"]
    assert sorted(p.name for p in (styled / style).iterdir()) == ["Negative", "Positive", "synthetic.json"]
    meta = json.loads((styled / style / "synthetic.json").read_text())
    assert meta["style"] == style and meta["complete"]
    again = generate(tmp_path / "again", per_class=6, seed=0, size=96, style=style, workers=2)
    assert again["generated"] and _tree(tmp_path / "again") == _tree(styled / style)
    assert not generate(styled / style, per_class=6, seed=0, size=96, style=style)["generated"]  # complete
    other = _tree(styled / "concrete")
    assert all(data != other[rel] for rel, data in _tree(styled / style).items() if rel.endswith(".jpg"))


def test_styles_differ_measurably_from_concrete(styled):
    # Measured (6/class, 96 px) at seeds 0, 1, 2 -- concrete: mean 147/183/136, texture 0.017/0.018/0.014,
    # blue 0.92/0.93/0.93; asphalt: 72/67/67, 0.030/0.027/0.054, 1.08/1.05/1.04; painted: texture
    # 0.007 at each seed; low_light: mean 76/81/79, texture 0.044/0.043/0.051.
    s = {style: _surface(styled / style) for style in STYLE_NAMES}
    c = s["concrete"]
    assert s["asphalt"]["mean"] < 0.6 * c["mean"] and s["asphalt"]["texture"] > 1.5 * c["texture"]  # dark, granular
    assert s["asphalt"]["blue"] > 1 > c["blue"]  # bluish grey, not beige
    assert s["painted"]["texture"] < 0.6 * c["texture"]  # smooth
    assert s["low_light"]["mean"] < 0.6 * c["mean"] and s["low_light"]["texture"] > 2 * c["texture"]  # dim, noisy


def test_styles_reach_the_generator_from_the_cli_and_the_config(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "a"), "--per-class", "2", "--size", "48", "--style", "painted"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "2/class x 2 classes (Positive, Negative), painted style" in line
    assert json.loads((tmp_path / "a" / "synthetic.json").read_text())["style"] == "painted"
    assert main(["--out", str(tmp_path / "b"), "--per-class", "2", "--style", "marble"]) == 2
    assert "marble" in capsys.readouterr().err
    cfg = compose_cfg(tmp_path, tmp_path / "data", ["experiment=demo", "data.synthetic.style=low_light"])
    assert sorted(data_classes(cfg.data)["class_names"]) == ["Negative", "Positive"]
    r = generate(tmp_path / "h", **{**dict(cfg.data.synthetic), "per_class": 2, "size": 32})
    assert r["style"] == "low_light" and r["counts"] == {"Positive": 2, "Negative": 2}
    cfg = compose_cfg(tmp_path, tmp_path / "data", ["experiment=demo"])
    assert cfg.data.synthetic.style == "concrete"


@pytest.mark.parametrize("kwargs, key", [
    ({"style": "marble"}, "style="),
    ({"style": "asphalt", "kind": "multiclass"}, "kind=multiclass"),
    ({"style": "painted", "kind": "sdnet"}, "kind=sdnet"),
    ({"style": "low_light", "layout": "scenes"}, "layout=scenes"),
])
def test_styles_elsewhere_are_one_line_errors(tmp_path, kwargs, key):
    with pytest.raises(CrackLightningError) as e:
        generate(tmp_path / "bad", **{"per_class": 2, "size": 32, **kwargs})
    assert key in str(e.value) and "style" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_concrete_style_is_fine_for_every_kind(tmp_path):
    # data.synthetic of experiment=demo says style: concrete; kind=multiclass/sdnet must still work
    assert generate(tmp_path / "m", per_class=2, size=32, kind="multiclass", style="concrete")["generated"]
    assert generate(tmp_path / "s", per_class=10, size=32, kind="sdnet", style="concrete")["generated"]
    assert class_folders_of(kind="multiclass", style="concrete") == ["crack", "joint", "stain", "clean"]
