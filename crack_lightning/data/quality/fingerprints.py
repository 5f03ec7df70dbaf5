"""Per-file fingerprints: content hash, decode check and perceptual hash, fast and in parallel.

Shared by the dataset validator (``validate.py``) and the grouped split: both need
to know which files are broken, which are byte-identical and which are the same
picture re-encoded or shifted by a pixel or two.

* :func:`fingerprint_file` reads a file once, hashes the bytes (SHA-256), decodes the
  whole image (so truncated files are caught: PIL raises with
  ``LOAD_TRUNCATED_IMAGES`` off, and a JPEG with no end-of-image marker after its
  last scan is called truncated too) and computes :func:`phash`.
* :func:`fingerprint_files` does that for many files on all cores (``fork`` on
  Linux, so the workers do not re-import Lightning).
* :func:`near_pairs` finds all hash pairs within a Hamming distance (blockwise
  ``np.bitwise_count``: 40,000 hashes in a few seconds).
* :func:`verify_pairs` checks candidate pairs at pixel level.  Perceptual hashes of
  low-structure textures such as plain concrete collide by chance, so a hash match
  alone is not a near-duplicate: the pair must also correlate at full resolution
  (band-passed grayscale, best of all shifts up to +-2 px).

This module must stay light: no torch, no Lightning.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from crack_lightning.utils.parallel import parallel_map, resolve_workers

KINDS = ("ok", "empty", "not_image", "truncated", "unreadable")


# --- perceptual hash ------------------------------------------------------------------

_HASH_SIZE = 8
_PHASH_SIDE = 32  # imagehash.phash: hash_size * highfreq_factor (4)
# Rows 0..7 of the unnormalised DCT-II matrix (scipy.fftpack.dct's convention). Two small
# matmuls give the 8x8 low-frequency block that imagehash gets from two full FFT-DCTs.
_k = np.arange(_HASH_SIZE)[:, None]
_n = np.arange(_PHASH_SIDE)[None, :]
_DCT = 2.0 * np.cos(np.pi * _k * (2 * _n + 1) / (2 * _PHASH_SIDE))
_DCT_T = np.ascontiguousarray(_DCT.T)
del _k, _n


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash as an unsigned int; bit-for-bit ``imagehash.phash``.

    Grayscale, Lanczos-resized to 32x32, DCT, the 8x8 lowest frequencies compared
    with their median; the first coefficient is the most significant bit, so
    ``int(str(imagehash.phash(image)), 16) == phash(image)``.
    """
    gray = image if image.mode == "L" else image.convert("L")
    return _phash_gray(gray)


def _phash_gray(gray: Image.Image) -> int:
    small = np.asarray(gray.resize((_PHASH_SIDE, _PHASH_SIDE), Image.Resampling.LANCZOS), np.float64)
    low = _DCT @ small @ _DCT_T
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def near_pairs(hashes: np.ndarray, max_distance: int, rows: int = 64, cols: int = 8192) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``max_distance`` bits.

    Brute force over the upper triangle in ``rows x cols`` tiles (XOR +
    ``np.bitwise_count`` into preallocated buffers that stay in cache; indices are
    only extracted from tiles with a hit): 40,000 hashes take about a second.
    Returns a ``(k, 2)`` int64 array sorted by ``i`` then ``j``.
    """
    h = np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64).ravel())
    n = len(h)
    xor = np.empty((rows, cols), np.uint64)
    count = np.empty((rows, cols), np.uint8)
    hit = np.empty((rows, cols), bool)
    out = []
    for r0 in range(0, max(0, n - 1), rows):
        r1 = min(n, r0 + rows)
        left = h[r0:r1, None]
        for c0 in range(r0 + 1, n, cols):
            c1 = min(n, c0 + cols)
            x, c, m = xor[:r1 - r0, :c1 - c0], count[:r1 - r0, :c1 - c0], hit[:r1 - r0, :c1 - c0]
            np.bitwise_xor(left, h[None, c0:c1], out=x)
            np.bitwise_count(x, out=c)
            np.less_equal(c, max_distance, out=m)
            if m.any():
                i, j = np.nonzero(m)
                i, j = i + r0, j + c0
                keep = j > i  # the first tiles of a row block reach below the diagonal
                out.append(np.stack([i[keep], j[keep]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out).astype(np.int64, copy=False)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


# --- one file -------------------------------------------------------------------------


@dataclass
class Fingerprint:
    path: Path
    nbytes: int
    sha256: str  # hex digest of the file's bytes
    kind: str  # 'ok' | 'empty' | 'not_image' | 'truncated' | 'unreadable'
    error: str | None = None
    format: str | None = None  # PIL format name, e.g. 'JPEG'
    mode: str | None = None  # mode as stored, e.g. 'RGB', 'L'
    size: tuple[int, int] | None = None  # (width, height)
    phash: int | None = None
    extra: np.ndarray | None = None  # extra(rgb) when asked for

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def _jpeg_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the last start-of-scan marker.

    Entropy-coded data byte-stuffs 0xFF, so FFD9/FFDA cannot occur inside a scan;
    an EXIF thumbnail's own markers come before the main image's scans.
    """
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0


def _error_kind(err: BaseException) -> str:
    return "truncated" if "truncat" in str(err).lower() else "unreadable"


def fingerprint_file(path, extra: Callable[[np.ndarray], np.ndarray] | None = None) -> Fingerprint:
    """Fingerprint one file: read once, SHA-256, full decode, perceptual hash.

    Never raises for a bad file: the problem is in ``.kind`` and ``.error``.
    ``extra`` (a picklable function) gets the image as a uint8 RGB ``(H, W, 3)``
    array (the grouped split reads colour along the borders); its result is
    stored in ``.extra`` (``None`` if it raised: that does not make the file bad).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return Fingerprint(path, 0, "", "unreadable", f"{type(err).__name__}: {err.strerror or err}")
    fp = Fingerprint(path, len(data), hashlib.sha256(data).hexdigest(), "ok")
    if not data:
        fp.kind, fp.error = "empty", "zero-byte file"
        return fp
    truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, whatever others set
    try:
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            fp.kind, fp.error = "not_image", "not an image PIL can identify"
            return fp
        fp.format, fp.mode, fp.size = image.format, image.mode, tuple(image.size)
        image.load()
        if fp.format == "JPEG" and not _jpeg_complete(data):
            fp.kind, fp.error = "truncated", "JPEG has no end-of-image marker after its last scan"
            return fp
        gray = image if image.mode == "L" else image.convert("L")
        fp.phash = _phash_gray(gray)
    except Exception as err:  # noqa: BLE001 -- any decoder error is a finding, not a crash
        fp.kind, fp.error = _error_kind(err), f"{type(err).__name__}: {err}"
        fp.phash = None
        return fp
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag
    if extra is not None:
        # the image check shares this pass: a failing extra says nothing about the file
        try:
            fp.extra = extra(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
        except Exception:  # noqa: BLE001 -- extra stays None; its user decides (grouping: a group of its own)
            fp.extra = None
    return fp


# --- many files -----------------------------------------------------------------------


def _fingerprint_job(job):
    path, extra = job
    return fingerprint_file(path, extra)


def fingerprint_files(paths: Iterable, workers: int | None = None,
                      extra: Callable[[np.ndarray], np.ndarray] | None = None,
                      progress: bool = False) -> list[Fingerprint]:
    """:func:`fingerprint_file` for every path, in input order, on ``workers`` processes.

    ``workers=None`` uses every available core; 1 (or a handful of files) runs in
    this process.
    """
    paths = [Path(p) for p in paths]
    workers = min(resolve_workers(workers), max(1, len(paths) // 16))
    return list(parallel_map(_fingerprint_job, [(p, extra) for p in paths], workers,
                             progress="fingerprinting" if progress else None))


# --- pixel-level check of candidate pairs ----------------------------------------------

# Band-pass of the pixel check (difference of Gaussians, sigmas in px) and its threshold, set
# between different images and edited copies of one; tests/test_validate.py checks both sides.
BAND = (1.2, 4.0)
MIN_CORRELATION = 0.55
MAX_SHIFT = 2  # pixels, each axis
_VERIFY_MAX_SIDE = 320  # larger images are compared at this size


def _load_gray(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except Exception:  # noqa: BLE001 -- a file that changed since fingerprinting: no match
        return None


def _gaussian(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, sigma, mode="reflect")


def _bandpass(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Grayscale at ``size`` (w, h), float32, band-passed (difference of Gaussians, :data:`BAND`).

    Removes lighting gradients and large stains (which many different images share)
    and the finest JPEG noise (which recompression changes), keeping the surface
    texture that makes an image itself.
    """
    if (gray.shape[1], gray.shape[0]) != size:
        gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    a = gray.astype(np.float32)
    return _gaussian(a, BAND[0]) - _gaussian(a, BAND[1])


def _best_shift(a: np.ndarray, b: np.ndarray, max_shift: int) -> tuple[float, int, int]:
    """Best normalised correlation of ``b`` shifted against ``a`` (same shape) over
    integer shifts up to ``max_shift``, ignoring a border (padding, filter edges)."""
    h, w = a.shape
    m = min(8, h // 8, w // 8) + max_shift
    if h - 2 * m < 4 or w - 2 * m < 4:
        m = max_shift
    ref = a[m:h - m, m:w - m]
    ref = ref - ref.mean()
    ref_norm = float(np.sqrt((ref * ref).sum()))
    best = (-1.0, 0, 0)
    if ref_norm == 0:
        return best
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            win = b[m + dy:h - m + dy, m + dx:w - m + dx]
            win = win - win.mean()
            norm = float(np.sqrt((win * win).sum()))
            if norm == 0:
                continue
            c = float((ref * win).sum()) / (ref_norm * norm)
            if c > best[0]:
                best = (c, dx, dy)
    return best


def _compare_size(sa: tuple[int, int], sb: tuple[int, int]) -> tuple[int, int]:
    w, h = min(sa[0], sb[0]), min(sa[1], sb[1])
    scale = min(1.0, _VERIFY_MAX_SIDE / max(w, h))
    return max(8, round(w * scale)), max(8, round(h * scale))


def _verify_chunk(job):
    pairs, max_shift = job  # [(path_a, path_b), ...], sorted by path_a: cache hits are common
    grays: OrderedDict = OrderedDict()
    passed: OrderedDict = OrderedDict()

    def cached(cache, key, make):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        cache[key] = value = make()
        if len(cache) > 64:
            cache.popitem(last=False)
        return value

    out = []
    for pa, pb in pairs:
        ga, gb = cached(grays, pa, lambda: _load_gray(pa)), cached(grays, pb, lambda: _load_gray(pb))
        if ga is None or gb is None:
            out.append((0.0, 0, 0))
            continue
        size = _compare_size((ga.shape[1], ga.shape[0]), (gb.shape[1], gb.shape[0]))
        a = cached(passed, (pa, size), lambda: _bandpass(ga, size))
        b = cached(passed, (pb, size), lambda: _bandpass(gb, size))
        out.append(_best_shift(a, b, max_shift))
    return out


def verify_pairs(paths: Sequence, pairs: np.ndarray, workers: int | None = None,
                 max_shift: int = MAX_SHIFT, progress: bool = False) -> np.ndarray:
    """Pixel-level similarity of candidate pairs (e.g. from :func:`near_pairs`).

    Returns a ``(k, 3)`` float array: best normalised correlation of the band-passed
    grayscale images over shifts up to ``max_shift`` px, and that shift ``(dx, dy)``.
    A pair is a near-duplicate when the correlation is at least
    :data:`MIN_CORRELATION`.  Images of different sizes are compared at the
    smaller size.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return np.zeros((0, 3))
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    objs = {int(k): Path(paths[k]) for k in np.unique(pairs)}  # one object per path: pickle memoises
    todo = [(objs[int(i)], objs[int(j)]) for i, j in pairs[order]]
    step = 32
    jobs = [(todo[s:s + step], max_shift) for s in range(0, len(todo), step)]
    results = []
    for res in parallel_map(_verify_chunk, jobs, resolve_workers(workers), chunk=1, total=len(pairs),
                            progress="checking near-duplicate candidates" if progress else None, weight=len):
        results.extend(res)
    out = np.empty((len(pairs), 3))
    out[order] = np.asarray(results, dtype=np.float64).reshape(-1, 3)
    return out
