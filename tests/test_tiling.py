"""Whole-photo tiling: coverage of every pixel, exact overlap averaging, a planted crack.

A fake backend whose output is a known function of the tile's pixels (its mean
brightness, its share of dark pixels) makes the averaging checkable exactly, without
any model.
"""

from __future__ import annotations

import csv
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from crack_lightning.data.augmentation import eval_transform
from crack_lightning.inference import tiling

PATCH, STRIDE = (227, 227), (113, 113)
# input size = patch size, mean 0, std 1: the transform only scales to [0, 1]
IDENTITY = {"input_size": (3, 227, 227), "interpolation": "bilinear", "mean": [0.0] * 3, "std": [1.0] * 3}


class Brightness:
    """Fake backend: the mean brightness of each tile, in [0, 1]."""

    def __call__(self, images):
        return images.mean(dim=(1, 2, 3)).numpy()


class DarkShare:
    """Fake backend: the share of a tile's pixels darker than 0.25 -- crack pixels."""

    def __call__(self, images):
        return (images.mean(dim=1) < 0.25).float().mean(dim=(1, 2)).numpy()


def brute_force_average(height, width, values):
    """Per-pixel mean of the window values, on a full-size float64 array."""
    total, count = np.zeros((height, width)), np.zeros((height, width))
    for (t, l, h, w), v in values:
        total[t:t + h, l:l + w] += v
        count[t:t + h, l:l + w] += 1
    return total, count


def test_windows_cover_every_pixel_of_a_non_multiple_photo():
    height, width = 400, 613  # neither a multiple of the patch nor of the stride
    wins = tiling.windows(height, width, PATCH, STRIDE)
    assert isinstance(wins, types.GeneratorType)  # lazy: tiles are made batch by batch
    wins = list(wins)
    _, count = brute_force_average(height, width, [(w, 1.0) for w in wins])
    assert count.min() >= 1
    assert max(w.top + w.height for w in wins) == height and max(w.left + w.width for w in wins) == width
    assert all(w.height == 227 and w.width == 227 for w in wins)
    assert len(wins) == len(tiling.starts(height, 227, 113)) * len(tiling.starts(width, 227, 113)) == 3 * 5


def test_photo_smaller_than_the_window_is_one_window():
    assert list(tiling.windows(100, 300, PATCH, STRIDE)) == [
        tiling.Window(0, 0, 100, 227), tiling.Window(0, 73, 100, 227)]
    assert tiling.starts(50, 227, 113) == [0]


def test_overlaps_are_averaged_exactly(tmp_path):
    height, width = 400, 613
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    result, grid = tiling.predict_photo(
        Image.fromarray(pixels), Brightness(), eval_transform(IDENTITY), 0.5, PATCH, STRIDE, batch_size=4,
        tiles_csv=tmp_path / "tiles.csv")
    with open(tmp_path / "tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.tiles == 15
    values = []
    for row in rows:
        t, l, h, w = (int(row[k]) for k in ("top", "left", "height", "width"))
        expected = pixels[t:t + h, l:l + w].mean() / 255
        assert float(row["crack_probability"]) == pytest.approx(expected, abs=1e-5)
        values.append(((t, l, h, w), expected))
    total, count = brute_force_average(height, width, values)
    heat = grid.resample(height, width)  # the cell grid expanded to every pixel
    np.testing.assert_allclose(heat, total / count, atol=1e-5)
    assert result.max_probability == pytest.approx(max(v for _, v in values), abs=1e-5)
    assert grid.total.size < 200  # averaged on the cell grid, not per pixel


def _wall(height, width, crack: bool, seed=0) -> Image.Image:
    """Light concrete-like noise; with ``crack``, a dark jagged line in the lower right."""
    rng = np.random.default_rng(seed)
    base = rng.normal(170, 12, (height, width)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(np.stack([base] * 3, -1))
    if crack:
        pts = [(400 + 12 * i, 300 + int(8 * np.sin(i)) + 3 * i) for i in range(15)]
        ImageDraw.Draw(img).line(pts, fill=(30, 30, 30), width=5)
    return img


def test_planted_crack_scores_higher_than_the_background(tmp_path):
    height, width = 500, 700
    transform = eval_transform(IDENTITY)
    photo = _wall(height, width, crack=True)
    result, grid = tiling.predict_photo(
        photo, DarkShare(), transform, 0.005, PATCH, STRIDE, batch_size=8,
        tiles_csv=tmp_path / "tiles.csv", heatmap_png=tmp_path / "heat.png", heatmap={"max_side": 400})
    heat = grid.resample(height, width)
    crack_mask = np.asarray(photo.convert("L")) < 64
    assert heat[crack_mask].mean() > 0.005 > heat[:200, :300].max()  # the crack's region vs the clean corner
    assert result.verdict(0.005) and 0 < result.crack_area_fraction < 1
    assert 0 < result.crack_tiles < result.tiles
    with Image.open(tmp_path / "heat.png") as png:
        assert max(png.size) <= 400
    plain, _ = tiling.predict_photo(_wall(height, width, crack=False), DarkShare(), transform, 0.005, PATCH, STRIDE, 8)
    assert not plain.verdict(0.005) and plain.crack_area_fraction == 0


def test_batched_tiles_match_the_per_image_eval_transform():
    """Cropping a uint8 batch and transforming it gives what eval_transform does to each
    crop as a PIL image -- the validation/test preprocessing of training."""
    config = {"input_size": (3, 32, 48), "interpolation": "bilinear",
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    transform = eval_transform(config)
    photo = _wall(300, 400, crack=True)
    image = np.array(photo)
    wins = tiling.windows(300, 400, PATCH, STRIDE)
    sizes = []
    for batch, crops in tiling.batches(image, wins, 3, transform):
        sizes.append(len(batch))
        for (t, l, h, w), crop in zip(batch, crops):
            expected = transform(photo.crop((l, t, l + w, t + h)))
            torch.testing.assert_close(crop, expected, atol=1e-5, rtol=0)
    assert sizes == [3, 3] and crops.shape == (3, 3, 32, 48)


def test_heatmap_png_outlines_exactly_the_edge_of_the_region_above_the_threshold(tmp_path):
    """A black photo, 100 px windows side by side, one of them hot: over the photo the PNG is white
    exactly on the 1 px edge of the hot region (black blended with colour is never white); a map
    all below or all above the threshold has no outline; the title and the colour bar are drawn."""
    from scipy.ndimage import binary_erosion

    from crack_lightning.reports.heatmap import photo_room
    from crack_lightning.reports.plots import colour_table

    height, width = 400, 600
    photo = Image.new("RGB", (width, height))
    hot = np.zeros(24, np.float32)
    hot[9] = 0.9  # second row, fourth column: clear of the photo's border
    for name, probabilities, outlined in [("hot", hot, True), ("cold", np.zeros(24), False),
                                          ("all", np.full(24, 0.9), False)]:
        scores = tiling.PhotoScores.of(height, width, (100, 100), [0, 100, 200, 300], list(range(0, 600, 100)),
                                       probabilities)
        tiling.write_heatmap(photo, scores.grid, scores.at(0.5), 0.5, tmp_path / f"{name}.png", max_side=400)
        with Image.open(tmp_path / f"{name}.png") as png:
            pixels = np.asarray(png.convert("RGB")).astype(int)
        assert max(pixels.shape[:2]) == 400
        top = int(np.argmax((pixels[:, 0] < 255).any(-1)))  # the photo's first row: the bands above are white
        h, w = tiling._preview(photo, photo_room(400)).size[::-1]
        mask = scores.grid.resample(h, w) > 0.5
        edge = mask & ~binary_erosion(mask, np.ones((3, 3)), border_value=1)
        white = (pixels[top:top + h, :w] == 255).all(-1)
        np.testing.assert_array_equal(white, edge)
        assert edge.any() == outlined and (not outlined or (mask & ~edge).any())  # an edge with an inside
        assert (pixels[:top] < 100).all(-1).any()  # the title's dark text
        bar = pixels[top:top + h, w:]
        for row, colour in ((0, colour_table("turbo")[-1]), (h - 1, colour_table("turbo")[0])):  # 1 on top, 0 below
            assert (np.abs(bar[row] - colour * 255) <= 1).all(-1).any()
