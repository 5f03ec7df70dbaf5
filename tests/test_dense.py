"""Dense whole-photo mode: one backbone pass per block, windows pooled from the feature map.

Checked against windows mode (every window cropped and scored as a patch) on the shared trained
model: exactly equal where they must be (a photo of one window), close and of one verdict on a
wall with a planted crack, the same at any block size up to a window's context, and the geometry
of windows and blocks (coverage, flush edges, bounded blocks) for photos of any size.
"""

from __future__ import annotations

import logging

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw
from timm.layers import SelectAdaptivePool2d
from torch import nn

from crack_lightning.data.augmentation import eval_transform
from crack_lightning.inference import dense, tiling
from crack_lightning.inference.backends import TorchBackend
from crack_lightning.inference.checkpoint import LoadedClassifier
from crack_lightning.inference.photos import PhotoScorer
from crack_lightning.model_card import ModelCard, Preprocessing
from crack_lightning.models.classifier import CrackClassifier


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _backend(backbone: nn.Module, input_size: int, head: tuple[list, list] | None = None) -> TorchBackend:
    """``backbone`` under our head as train.py builds it, for 227 px patches seen at ``input_size``."""
    model = CrackClassifier(backbone, optimizer=partial(torch.optim.Adam), drop_rate=0.0)
    if head:
        with torch.no_grad():
            model.head[1].weight.copy_(torch.tensor(head[0])), model.head[1].bias.copy_(torch.tensor(head[1]))
    card = ModelCard(["Negative", "Positive"], Preprocessing((input_size, input_size), "bilinear", MEAN, STD, (227, 227)))
    return TorchBackend(LoadedClassifier(model.eval(), card, Path("model.ckpt"), "0" * 64))


class Patchify(nn.Module):
    """A backbone whose feature cells see their own 8 x 8 px alone, their mean brightness: no
    context, so dense mode must score each window as its crop (up to where the resize samples)."""

    num_features = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 8, stride=8)
        nn.init.constant_(self.conv.weight, 1 / 192), nn.init.zeros_(self.conv.bias)
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)

    def forward_features(self, x):
        return self.conv(x)

    def forward_head(self, x):
        return self.global_pool(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.fixture(scope="module")
def darkness():
    """P(crack) rises as a window darkens: the bare wall (0.965 normalised) scores about 0.35."""
    return _backend(Patchify(), 64, head=([[0.0], [-40.0]], [0.0, 38.0]))


@pytest.fixture(scope="module")
def cnn():
    """Our custom CNN, random weights (convolutions with padding: windows see their neighbours)."""
    import crack_lightning.backbones  # noqa: F401  (registers custom_cnn)

    torch.manual_seed(0)
    head = torch.randn(2, 256) * 3  # a strong head: probabilities that differ from photo to photo
    return _backend(timm.create_model("custom_cnn", num_classes=0, pretrained=False), 64, (head.tolist(), [0.0, 0.0]))


def _wall(height: int, width: int, seed: int = 0, crack: bool = True) -> Image.Image:
    """Concrete-like noise with a dark jagged crack across its middle third."""
    rng = np.random.default_rng(seed)
    base = rng.normal(170, 14, (height, width)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(np.stack([base] * 3, -1))
    pts = [(width // 3 + 9 * i, height // 2 + int(10 * np.sin(i / 2)) + 2 * i) for i in range(width // 27)]
    if crack:
        ImageDraw.Draw(img).line(pts, fill=(25, 25, 25), width=7)
    return img


def _as_patches(scores: tiling.PhotoScores, photo: Image.Image, backend) -> np.ndarray:
    """The probabilities of dense mode's own windows, each cropped and scored as a patch."""
    transform = eval_transform(backend.card.preprocessing.to_timm_data_config())
    return np.concatenate([backend(x) for _, x in tiling.batches(np.asarray(photo), scores.windows(), 64, transform)])


def test_a_photo_of_one_window_scores_exactly_as_the_patch(cnn):
    """Same pixels, same resize, same padding: the pooled window is the patch's global pool."""
    scorer = PhotoScorer(cnn, mode="dense")
    assert scorer.mode == "dense" and cnn.dense_geometry() == dense.Geometry((4, 4), 16, "avg")
    transform = eval_transform(cnn.card.preprocessing.to_timm_data_config())
    got, expected = [], []
    for seed in range(4):
        photo = _wall(227, 227, seed)
        scores = scorer(photo)
        assert scores.probabilities.shape == (1,) and scores.tops == scores.lefts == [0]
        crack, classes = cnn.scores(transform(photo)[None])
        got.append(scores.probabilities[0]), expected.append(crack[0])
        np.testing.assert_allclose(scores.classes, classes[0], atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.ptp(expected) > 1e-4, "the photos must score differently for the comparison to mean anything"


def test_dense_windows_are_where_their_crops_are(darkness):
    """Without context, dense and windows mode differ only by resampling: the windows' geometry."""
    photo = _wall(500, 760)
    scorer = PhotoScorer(darkness, mode="dense")
    scores = scorer(photo)
    assert scorer.count_size(500, 760) == len(scores.probabilities) == len(scores.tops) * len(scores.lefts) > 12
    patches = _as_patches(scores, photo, darkness)
    assert np.ptp(patches) > 0.1, "the crack must show"
    assert np.abs(patches - scores.probabilities).max() < 0.02
    assert np.corrcoef(patches, scores.probabilities)[0, 1] > 0.99
    windows = PhotoScorer(darkness, mode="windows")(photo)
    assert scores.at(0.6).verdict(0.6) and windows.at(0.6).verdict(0.6)
    assert abs(scores.probabilities.max() - windows.probabilities.max()) < 0.05
    assert not PhotoScorer(darkness, mode="dense")(_wall(500, 760, crack=False)).at(0.6).verdict(0.6)


def test_tile_size_changes_only_a_windows_context(darkness, cnn):
    """Tiles are whole feature cells, stitched: exactly the same scores at any tile size without
    context; with it (padding convolutions at the seams) close, one tile of the photo the reference."""
    photo = _wall(700, 900, seed=1)
    for backend, tolerance in ((darkness, 1e-6), (cnn, 0.1)):
        one = PhotoScorer(backend, mode="dense", block_megapixels=1000)
        small = PhotoScorer(backend, mode="dense", block_megapixels=0.02)
        assert len(one._plan(700, 900).tiles()) == 1 < len(small._plan(700, 900).tiles())
        a, b = one(photo), small(photo)
        assert a.tops == b.tops and a.lefts == b.lefts
        assert np.abs(a.probabilities - b.probabilities).max() < tolerance


@pytest.mark.parametrize("height, width", [(3024, 4032), (30000, 40000), (300, 5000), (227, 227), (229, 1000)])
def test_windows_cover_the_photo_and_every_block_is_bounded(height, width):
    geo = dense.Geometry((7, 7), 32, "avg")
    the_plan = dense.plan(height, width, (227, 227), (113, 113), (224, 224), geo, block_megapixels=1)
    assert the_plan.tops[0] == the_plan.lefts[0] == 0
    h, w = the_plan.size  # the footprint of a window: 227 px, give or take the rounding to whole cells
    assert abs(h - 227) <= 0.07 * 227 and abs(w - 227) <= 0.07 * 227  # half a cell of a 7-cell window at most
    assert the_plan.tops[-1] == height - h and the_plan.lefts[-1] == width - w  # flush: no pixel left out
    assert all(b - a <= 113 for a, b in zip(the_plan.tops, the_plan.tops[1:]))
    seen = [(r, s.left + c) for s in the_plan.strips for c in s.cols for r in the_plan.row_cells]
    assert sorted(seen) == sorted((r, c) for r in the_plan.row_cells for c in the_plan.col_cells)  # each once
    cells = (the_plan.scaled[0] // 32, the_plan.scaled[1] // 32)
    for s in the_plan.strips:  # a strip's tiles cover it once, none over the budget or smaller than half a tile
        assert s.right - s.left <= max(7, dense.STRIP_TILES * the_plan.tile) and s.right <= cells[1]
        tiles = [t for t in the_plan.tiles() if t[2] >= s.left and t[3] <= s.right]
        assert sum((b - t) * (r - lo) for t, b, lo, r in tiles) == cells[0] * (s.right - s.left)
        for t, b, lo, r in tiles:
            assert (b - t) * (r - lo) * 32 * 32 <= max(1e6, 49 * 32 * 32) * 1.01
            assert min(b - t, r - lo) >= min(the_plan.tile // 2, cells[0], s.right - s.left)
    assert dense.plan(200, 4000, (227, 227), (113, 113), (224, 224), geo, 1) is None  # lower than a window


def test_a_backbone_without_a_feature_map_is_scored_window_by_window(darkness, caplog):
    import timm

    vit = torch.nn.Module()
    vit.backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, pretrained=False)
    with pytest.raises(dense.DenseUnsupported, match="tile_mode=windows"):
        dense.geometry(vit, (32, 32))

    class PatchesOnly:  # a backend with patches only (or a ViT's)
        card = darkness.card
        scores = darkness.scores

        def __call__(self, images):
            return self.scores(images)[0]

    with caplog.at_level(logging.WARNING):
        scorer = PhotoScorer(PatchesOnly(), mode="dense")
    assert scorer.mode == "windows" and "window by window" in caplog.text
    photo = _wall(300, 400)
    np.testing.assert_array_equal(scorer(photo).probabilities, PhotoScorer(darkness, mode="windows")(photo).probabilities)


def test_auto_pools_windows_of_seven_cells_a_side_and_crops_smaller_ones(caplog):
    """tile_mode=auto (the default): dense where a window spans DENSE_MIN_CELLS (7) feature cells a
    side, windows mode below it, saying why; tile_mode=dense keeps dense there, with a warning."""
    from crack_lightning.inference.photos import DENSE_MIN_CELLS

    seven, six = _backend(Patchify(), 8 * DENSE_MIN_CELLS), _backend(Patchify(), 8 * (DENSE_MIN_CELLS - 1))
    with caplog.at_level(logging.INFO):
        assert PhotoScorer(seven).mode == "dense" and not caplog.records
        assert PhotoScorer(six).mode == "windows"
    assert [r.levelname for r in caplog.records] == ["INFO"] and "6x6 feature cells" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert PhotoScorer(six, mode="dense").mode == "dense"
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "tile_mode=windows" in caplog.text
    assert PhotoScorer(seven, mode="windows").mode == "windows"


def test_predict_writes_the_same_outputs_in_both_modes(trained_run, tmp_path):
    """tile_mode=windows keeps the old windows (227 px every 113 px); dense has its own, same columns."""
    from tests.test_predict import compose_predict, read_rows

    from crack_lightning.inference.predict import predict

    (tmp_path / "photos").mkdir()
    _wall(400, 613).save(tmp_path / "photos" / "wall.png")
    rows = {}
    for mode in ("windows", "dense"):
        predict(compose_predict([f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"input={tmp_path / 'photos'}",
                                 f"output_dir={tmp_path / mode}", "tile=true", f"tile_mode={mode}",
                                 "heatmap.max_side=200"]))
        rows[mode] = read_rows(tmp_path / mode / "predictions.csv")[0]
        tiles = read_rows(rows[mode]["tiles_csv"])
        assert int(rows[mode]["tiles"]) == len(tiles) and Path(rows[mode]["heatmap"]).is_file()
    assert rows["windows"].keys() == rows["dense"].keys() and int(rows["windows"]["tiles"]) == 3 * 5


@pytest.mark.parametrize("strip_tiles, megapixels", [(16, 0.01), (1, 0.006)])
def test_stitched_tiles_give_every_window_its_own_cells_in_a_bounded_band(monkeypatch, strip_tiles, megapixels):
    """Features that are each cell's own mean (no context): every window's pooled value must be the
    mean of its cells of the whole scaled photo, through any tiling and strips, while the band of
    feature rows held never grows past a tile row and a window."""
    monkeypatch.setattr(dense, "STRIP_TILES", strip_tiles)
    geo, r = dense.Geometry((7, 7), 8, "avg"), 8
    the_plan = dense.plan(1500, 2600, (227, 227), (113, 113), (56, 56), geo, megapixels)
    assert len(the_plan.strips) > (1 if strip_tiles == 1 else 0) and len(the_plan.tile_rows()) > 2
    scaled = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (*the_plan.scaled, 3), dtype=np.uint8))
    cell_means = lambda x: torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2).float().mean(1, keepdim=True), r)
    heights = []

    def score(band, rows, cols):
        heights.append(band.shape[-2])
        pooled = torch.nn.functional.avg_pool2d(band, 7, stride=1)[0, 0][rows][:, cols].reshape(-1)
        return pooled.numpy(), torch.stack([pooled, -pooled], 1).numpy()

    crack, every = dense.dense_probabilities(scaled, the_plan, cell_means, score)
    whole = torch.nn.functional.avg_pool2d(cell_means(scaled[None]), 7, stride=1)[0, 0]
    expected = whole[the_plan.row_cells][:, the_plan.col_cells].numpy()
    np.testing.assert_allclose(crack, expected, rtol=1e-5)
    np.testing.assert_allclose(every[..., 1], -expected, rtol=1e-5)
    assert max(heights) <= the_plan.tile + 7
