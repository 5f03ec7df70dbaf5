"""Synthetic patches cut from shared scenes: the real dataset's leak, reproduced.

The real "Concrete Crack Images for Classification" patches were cut from 458
photos, several dozen per photo, and carry no id of their photo.  Neighbouring
patches share lighting, colour cast and texture, and their borders continue into
each other, so a random patch split puts near-copies of test images into
training.  This layout renders whole wall *scenes* (``tiles`` x ``tiles``
patches), labels each patch by the crack pixels inside it and keeps both
classes from the same scene -- as a camera photo gives both.  The scene of every
patch is written to ``synthetic_scenes.csv`` as ground truth, so tests and the
README can measure how much a split leaks; nothing in the file names or pixels
carries it.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from crack_lightning.data.synthetic.render import CLASSES, background, crack_mask, develop, distract
from crack_lightning.utils.parallel import parallel_map

SCENES_CSV = "synthetic_scenes.csv"  # ground truth of layout="scenes": path -> scene


def render_scene(rng: np.random.Generator, tiles: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One wall photo of ``tiles * size`` px square: (uint8 RGB, crack mask in [0, 1))."""
    s = tiles * size
    lum = background(rng, s, scale=tiles)
    kinds = [k for k, p in (("stain", 0.5), ("shadow", 0.4), ("joint", 0.3), ("scratch", 0.3)) if rng.random() < p]
    lum = distract(rng, s, lum, kinds)
    mask = np.zeros((s, s), np.float32)
    if rng.random() < 0.75:  # a quarter of the photos show no crack at all
        for _ in range(1 + int(rng.random() < 0.3)):
            mask = np.maximum(mask, crack_mask(rng, s))
    return develop(rng, lum * (1 - mask)), mask


def patch_label(mask: np.ndarray) -> int | None:
    """1 if a crack runs through the patch, 0 if none touches it, None if it only clips it."""
    m = mask.shape[0] // 8
    if (mask[m:-m, m:-m] > 0.3).sum() >= mask.shape[0]:  # ~ a 1 px line across the patch
        return 1
    if mask.max() < 0.02:
        return 0
    return None  # a crack in the margin only: ambiguous, dropped like the dataset's curators would


def _scene_patches(job) -> list[tuple[int, int, int, bytes]]:
    """Render scene ``index``; return its kept patches as (label, row, col, JPEG bytes)."""
    seed, index, tiles, size = job
    rng = np.random.default_rng([seed, 2, index])  # own stream per scene: any worker count
    rgb, mask = render_scene(rng, tiles, size)
    quality = int(rng.integers(70, 96))  # one camera, one JPEG setting per photo
    cells = [(r, c) for r in range(tiles) for c in range(tiles)]
    labels = [patch_label(mask[r * size:(r + 1) * size, c * size:(c + 1) * size]) for r, c in cells]
    pos = [cell for cell, y in zip(cells, labels) if y == 1]
    neg = [cell for cell, y in zip(cells, labels) if y == 0]
    # Keep every crack patch and a photo-dependent share of the plain ones, so scenes
    # differ in class mix (a grouped split must still stratify).
    n_neg = len(neg) if not pos else min(len(neg), math.ceil(len(pos) * rng.uniform(0.5, 2.0)))
    keep = [(1, cell) for cell in pos] + [(0, neg[i]) for i in sorted(rng.permutation(len(neg))[:n_neg])]
    out = []
    for label, (r, c) in keep:
        buf = io.BytesIO()
        Image.fromarray(rgb[r * size:(r + 1) * size, c * size:(c + 1) * size]).save(buf, "JPEG", quality=quality)
        out.append((label, r, c, buf.getvalue()))
    return out


def generate_scenes(root: Path, per_class: int, seed: int, size: int, tiles: int, workers: int) -> None:
    """Write ``per_class`` patches per class cut from as many scenes as it takes.

    Scenes are consumed in order, so the output is the same for any ``workers``.
    File numbers are shuffled: consecutive names must not betray neighbours.
    """
    rows: list[tuple[int, int, int, int, bytes]] = []  # label, scene, row, col, jpeg
    need = {0: per_class, 1: per_class}

    def take(index, patches):
        for label, r, c, data in patches:
            if need[label] > 0:
                need[label] -= 1
                rows.append((label, index, r, c, data))

    batch = 8 * max(1, workers)  # scenes per round: how many it takes is known only when enough are cut
    start = 0
    while any(need.values()):
        jobs = [(seed, i, tiles, size) for i in range(start, start + batch)]
        for index, patches in zip(range(start, start + batch), parallel_map(_scene_patches, jobs, workers, chunk=1)):
            take(index, patches)
        start += batch
    rng = np.random.default_rng([seed, 3])
    names = {label: iter(rng.permutation(per_class) + 1) for label in (0, 1)}
    table = []
    for label, scene, r, c, data in rows:
        rel = f"{CLASSES[1 - label]}/{next(names[label]):05d}.jpg"  # CLASSES[0] = Positive
        (root / rel).write_bytes(data)
        table.append((rel, scene, r, c))
    with (root / SCENES_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "scene", "row", "col"])
        w.writerows(sorted(table))


def read_scenes(root: Path) -> dict[str, tuple[int, int, int]]:
    """Ground truth of a scenes dataset: relative path -> (scene, row, col)."""
    with (Path(root) / SCENES_CSV).open(newline="") as f:
        return {r["path"]: (int(r["scene"]), int(r["row"]), int(r["col"])) for r in csv.DictReader(f)}


def split_leak(root: Path, split_of: dict[str, str], held_out: str = "test") -> dict[str, float]:
    """How much of ``held_out`` has its photo in training, by the scenes' ground truth.

    ``split_of`` maps relative paths to splits (as in ``splits.csv``).  Returns the
    share of held-out patches whose direct neighbour (the patch beside, above or
    below, cut from the same photo) is in train (``neighbour_in_train``), and whose
    photo has any patch in train (``photo_in_train``).
    """
    truth = read_scenes(root)
    where = {truth[p]: split for p, split in split_of.items()}
    train_scenes = {cell[0] for cell, split in where.items() if split == "train"}
    held = [cell for cell, split in where.items() if split == held_out]
    steps = ((0, 1), (0, -1), (1, 0), (-1, 0))
    neighbour = sum(any(where.get((s, r + dr, c + dc)) == "train" for dr, dc in steps) for s, r, c in held)
    photo = sum(s in train_scenes for s, _, _ in held)
    n = max(1, len(held))
    return {"neighbour_in_train": neighbour / n, "photo_in_train": photo / n, "images": len(held)}
