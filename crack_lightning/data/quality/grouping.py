"""Group patches that come from the same photo, so a split can keep them together.

The real dataset's patches were cut side by side from 458 photos and carry no
photo id.  Two cues recover the neighbourhoods from the pixels alone:

* **Matching borders.**  A patch's right edge continues into its right
  neighbour's left edge (and bottom into top).  Each edge is summarised as a
  colour profile (mean RGB over ``bin``-pixel runs of the outermost pixel line:
  luminance for structure, chroma for the photo's colour cast).  An edge pair is
  linked when each is the other's nearest match *and* clearly nearer than the
  runner-up on both sides (Lowe's ratio test): plain, featureless borders match
  many others about equally well and are left unlinked rather than chained to
  strangers.
* **Near-duplicates.**  Patches within a small perceptual-hash distance
  (re-saved or shifted copies, overlapping crops) are linked.

Linked patches form groups (connected components).  Measured on the synthetic
scenes layout (``tests/test_grouping.py``, README): nearly every pair of
neighbours lands in one group, and the few false links merge two photos, which
costs balance, never honesty.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

from crack_lightning.data.settings import GroupingSettings
from crack_lightning.data.quality.fingerprints import (
    MIN_CORRELATION,
    Fingerprint,
    fingerprint_files,
    near_pairs,
    verify_pairs,
)

log = logging.getLogger(__name__)

EDGES = ("top", "bottom", "left", "right")


def border_extra(settings: GroupingSettings) -> Callable:
    """The per-image ``extra`` of :func:`fingerprint_files` that grouping reads: the border
    profiles, so one decode serves the image check and the grouping."""
    return functools.partial(border_profiles, bin=settings.bin)


def border_profiles(rgb: np.ndarray, bin: int = 16) -> np.ndarray:
    """(4, F) edge descriptors of an RGB patch, rows in :data:`EDGES` order.

    Each edge: per run of ``bin`` pixels, the mean luminance and the two chroma
    deviations of the outermost pixel line.
    """
    rgb = np.asarray(rgb, np.float32)
    lines = (rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1])
    out = []
    for line in lines:
        n = len(line) // bin * bin
        p = line[:n].reshape(-1, bin, 3).mean(1)
        y = p.mean(1, keepdims=True)
        out.append(np.concatenate([y[:, 0], (p - y)[:, :2].ravel()]))
    return np.stack(out).astype(np.float32)


def _two_nearest(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: indices and squared distances of its two nearest ``ref`` rows,
    a row's own index excluded (a patch is not its own neighbour)."""
    k = min(3, len(ref))
    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(ref).kneighbors(query)
    dist = np.where(idx == np.arange(len(query))[:, None], np.inf, dist)
    order = np.argsort(dist, axis=1, kind="stable")[:, :2]
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1) ** 2


def match_edges(a: np.ndarray, b: np.ndarray, ratio: float) -> np.ndarray:
    """Pairs (i, j) where edge ``a[i]`` and edge ``b[j]`` are mutual, unambiguous best matches.

    ``a`` and ``b`` are (N, F) descriptors of opposite edges (right vs left, ...) of
    the same N patches.  scikit-learn's chunked brute-force k-NN keeps memory small
    (40,000 patches: ~5 s per direction on 2 cores).
    """
    n = len(a)
    if n < 3:
        return np.empty((0, 2), np.int64)
    centre = a.mean(0)  # smaller magnitudes: float32 distances stay exact enough
    a, b = (np.asarray(x, np.float32) - centre for x in (a, b))
    a_idx, a_d = _two_nearest(a, b)
    b_idx, b_d = _two_nearest(b, a)
    i, j = np.arange(n), a_idx[:, 0]
    mutual = b_idx[j, 0] == i
    eps = 1e-6 * a.shape[1]  # identical edges (flat, saturated): a tie is no evidence
    sharp = (a_d[:, 0] < ratio * a_d[:, 1]) & (b_d[j, 0] < ratio * b_d[j, 1]) & (a_d[:, 1] > eps)
    ok = mutual & sharp
    return np.stack([i[ok], j[ok]], 1)


def group_ids(borders: np.ndarray, ratio: float = 0.5, pairs: np.ndarray | None = None) -> np.ndarray:
    """Group index per patch from (N, 4, F) border descriptors plus known linked ``pairs``."""
    n = len(borders)
    links = [
        match_edges(borders[:, 3], borders[:, 2], ratio),  # right edge -> left edge
        match_edges(borders[:, 1], borders[:, 0], ratio),  # bottom edge -> top edge
    ]
    if pairs is not None:
        links.append(np.asarray(pairs, np.int64).reshape(-1, 2))
    pairs = np.concatenate(links)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def group_files(paths: list[Path], settings: GroupingSettings | None = None,
                prints: list[Fingerprint] | None = None) -> np.ndarray:
    """A group index per file of ``paths``.

    ``prints``: their fingerprints with :func:`border_extra`, in the same
    order (the image check's pass); without them the files are decoded here, in parallel.
    Unreadable files become groups of their own (the validator reports them)."""
    settings = settings or GroupingSettings()
    ratio, phash_distance, workers = settings.ratio, settings.phash_distance, settings.workers
    if prints is None:
        prints = fingerprint_files(paths, workers=workers, extra=border_extra(settings))
    # Patches of another size than most cannot continue into each other: own groups.
    shapes = [fp.extra.shape for fp in prints if fp.extra is not None]
    common = max(set(shapes), key=shapes.count) if shapes else None
    ok = np.array([fp.extra is not None and fp.extra.shape == common for fp in prints], bool)
    idx = np.flatnonzero(ok)
    near = np.empty((0, 2), np.int64)
    if phash_distance >= 0 and len(idx) > 1:
        candidates = near_pairs(np.array([prints[k].phash for k in idx], np.uint64), phash_distance)
        score = verify_pairs([paths[k] for k in idx], candidates, workers=workers)[:, 0]
        near = candidates[score >= MIN_CORRELATION]
    labels = np.arange(len(paths)) + len(paths)  # unreadable or odd-sized: singletons
    if len(idx):
        labels[idx] = group_ids(np.stack([prints[k].extra for k in idx]), ratio, near)
    _, labels = np.unique(labels, return_inverse=True)
    sizes = np.bincount(labels)
    log.info("Grouped %d images into %d groups (largest %d, singletons %d, near-duplicate links %d)",
             len(paths), len(sizes), sizes.max(initial=0), int((sizes == 1).sum()), len(near))
    return labels
