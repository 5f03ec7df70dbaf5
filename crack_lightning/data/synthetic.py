"""Deterministic synthetic stand-in for "Concrete Crack Images for Classification".

The public dataset (Özgenel, 2018) holds 227x227 RGB JPEGs of concrete walls in
``Positive/`` (crack) and ``Negative/`` (no crack).  It cannot be downloaded in CI,
so this module renders a look-alike that exercises the same code paths and is
hard enough that a model has to look at *shape*, not at colour statistics.

Design
------
* Every image is rendered from its own RNG seeded with ``[seed, class, index]``.
  The output therefore does not depend on rendering order or worker count, and
  the same seed gives byte-identical JPEGs (Pillow's encoder is deterministic).
* Background = base tone x colour cast (grey to beige) x a luminance field built
  from low-frequency lighting, mid-frequency mottling, aggregate blobs, fine
  grain and dark pores.  Brightness and texture strength vary widely in *both*
  classes so global mean/std say little about the label.
* Positives: tortuous cracks drawn as a smoothed random walk (heading jitter with
  a pull back to the main direction), width varying along the path, hairline
  to wide, plus thinner branches.
* Negatives: plain surfaces and hard distractors that move global statistics the
  way cracks do -- straight joints, formwork edges (brightness step + seam),
  stains, soft shadows, short straight scratches.  Positives also get stains
  and shadows sometimes, so those carry no label information either.
* Everything is vectorised numpy on float32 luminance + cheap PIL drawing; blur
  is a numpy 3-tap kernel because PIL's RGB GaussianBlur costs more than all
  the rest together.  One core renders several hundred images per second.

The tests check that a logistic regression on per-channel mean/std stays near
chance while a small CNN trained from scratch separates the classes.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("Positive", "Negative")
VERSION = 1  # bump when rendering changes so cached datasets are regenerated
META = "synthetic.json"


@functools.lru_cache(maxsize=64)
def _interp_matrix(s, cells):
    """(s, cells) Catmull-Rom upsampling weights, so 2-D noise is two tiny matmuls."""
    u = (np.arange(s) + 0.5) * cells / s - 0.5
    i0 = np.floor(u).astype(int)
    w = np.zeros((s, cells))
    for k in (-1, 0, 1, 2):
        x = np.abs(u - (i0 + k))
        kern = np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2)
        np.add.at(w, (np.arange(s), np.clip(i0 + k, 0, cells - 1)), np.where(x < 2, kern, 0))
    return w.astype(np.float32), np.ascontiguousarray(w.T, np.float32)


def _smooth_noise(rng, size, cells):
    """Value noise in ~[0, 1]: a small random grid upsampled bicubically."""
    w, wt = _interp_matrix(size, cells)
    a = w @ rng.random((cells, cells), dtype=np.float32)
    out = np.empty((size, size), np.float32)
    # Row blocks keep each GEMM below OpenBLAS's threading threshold; a threaded
    # GEMM this small can stall for milliseconds when the other core is busy.
    for i in range(0, size, 16):
        np.matmul(a[i:i + 16], wt, out=out[i:i + 16])
    return out


def _blur121(a, passes=1):
    """Separable [1,2,1]/4 blur with edge replication; cheap stand-in for Gaussian."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        a = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
        a = 0.25 * a[:, :-2] + 0.5 * a[:, 1:-1] + 0.25 * a[:, 2:]
    return a


@functools.lru_cache(maxsize=4)
def _grid(s):
    """Pixel coordinate grids (cached: rebuilding them per image is measurable)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


@functools.lru_cache(maxsize=1)
def _lut_index():
    return np.arange(4096, dtype=np.float32) / 2048  # luminance 0..2 in 4096 steps


def _background(rng, s):
    """Luminance field (~1.0 on average) of a bare concrete surface."""
    yy, xx = (g / s for g in _grid(s))
    ang = rng.uniform(0, 2 * math.pi)
    # Uneven lighting: a linear gradient plus very-low-frequency blotches.
    light = 1 + rng.uniform(0, 0.25) * ((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang))
    light += rng.uniform(0, 0.25) * (_smooth_noise(rng, s, int(rng.integers(2, 4))) - 0.5)
    tex = rng.uniform(0.3, 1.7)  # overall texture strength, independent of the label
    field = 1 + tex * 0.12 * (_smooth_noise(rng, s, int(rng.integers(5, 14))) - 0.5)
    # Aggregate: thresholded mid-frequency noise gives irregular lighter/darker blobs.
    agg = _smooth_noise(rng, s, int(rng.integers(20, 45)))
    thr = rng.uniform(0.6, 0.85)
    field += tex * rng.uniform(-0.06, 0.06) * np.clip((agg - thr) * 8, 0, 1)
    # Fine grain / speckle.
    # (uniform, not Gaussian, noise: half the cost and indistinguishable after JPEG)
    field += tex * rng.uniform(0.05, 0.17) * (rng.random((s, s), dtype=np.float32) - 0.5)
    # Pores: small dark pits.
    pores = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(pores)
    for _ in range(int(rng.integers(0, 60 * tex))):
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.6, 2.2)
        d.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(60, 200)))
    field *= 1 - 0.6 * np.asarray(pores, np.float32) / 255
    return light * field


def _walk(rng, s, start, heading, length, tort, step=3.5):
    """Random walk whose heading jitters around a slowly drifting main direction:
    local zig-zag (tortuosity) plus gentle large-scale meander, never a straight line."""
    x, y = start
    pts = [start]
    h = base = heading
    n = int(length / step)
    for e, drift in zip(rng.normal(0, tort, n).tolist(), rng.normal(0, 0.06, n).tolist()):
        base += drift
        h += e + 0.15 * (base - h)
        x, y = x + step * math.cos(h), y + step * math.sin(h)
        pts.append((x, y))
        if not (-10 <= x <= s + 10 and -10 <= y <= s + 10):
            break
    return pts


def _crack_path(rng, s, tort):
    """Main crack path crossing a good part of the image.  Cracks that only clip
    a corner are retried: at 96 px they are a few pixels and mostly label noise."""
    for _ in range(6):
        if rng.random() < 0.2:  # starts inside the panel: grow both ways from a seed point
            c, h = tuple(rng.uniform(0.3, 0.7, 2) * s), rng.uniform(0, 2 * math.pi)
            a = _walk(rng, s, c, h + math.pi, rng.uniform(0.3, 0.8) * s, tort)
            pts = a[::-1] + _walk(rng, s, c, h, rng.uniform(0.3, 0.8) * s, tort)[1:]
        else:  # enters at an edge and heads for a random point in the middle
            t = rng.uniform(0.1, 0.9) * s
            start = [(t, -5.0), (s + 5.0, t), (t, s + 5.0), (-5.0, t)][rng.integers(4)]
            tx, ty = rng.uniform(0.3, 0.7, 2) * s
            pts = _walk(rng, s, start, math.atan2(ty - start[1], tx - start[0]), 1.6 * s, tort)
        if 3.5 * sum(0 <= x <= s and 0 <= y <= s for x, y in pts) >= 0.6 * s:
            break
    return pts


def _stroke(d, pts, widths, fill):
    """Polyline with per-vertex width; round caps hide the seams between segments."""
    for (p, q), w in zip(zip(pts[:-1], pts[1:]), widths):
        d.line((p, q), fill=fill, width=max(1, int(round(w))))
        r = w / 2
        if r > 1:
            d.ellipse((q[0] - r, q[1] - r, q[0] + r, q[1] + r), fill=fill)


def _crack_mask(rng, s):
    """Darkening mask in [0, 1) of a crack system: main path, branches, maybe a second crack."""
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    for system in range(1 + int(rng.random() < 0.15)):
        if rng.random() < 0.25:  # hairline: thin but dark, so it survives 227 -> 96 px
            w0, depth = rng.uniform(1.0, 1.8), rng.uniform(0.6, 0.9)
        else:  # log-uniform up to wide, open cracks
            w0, depth = math.exp(rng.uniform(math.log(1.8), math.log(12.0))), rng.uniform(0.45, 0.85)
        w0 *= 0.6 if system else 1.0
        tort = rng.uniform(0.2, 0.5)
        pts = _crack_path(rng, s, tort)
        n = len(pts)
        # Width varies smoothly along the crack, with per-vertex roughness.
        prof = np.interp(np.arange(n), np.linspace(0, n, 6), rng.uniform(0.5, 1.3, 6))
        widths = w0 * prof * rng.uniform(0.75, 1.25, n)
        fill = int(255 * depth)
        _stroke(d, pts, widths, fill)
        for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):  # branches: thinner, shorter, tapering
            k = int(rng.integers(1, max(2, n - 1)))
            h = math.atan2(pts[k][1] - pts[k - 1][1], pts[k][0] - pts[k - 1][0])
            bp = _walk(rng, s, pts[k], h + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2), rng.uniform(0.15, 0.6) * s, tort)
            bw = np.linspace(1, 0.4, len(bp)) * max(1.0, widths[k] * rng.uniform(0.3, 0.7))
            _stroke(d, bp, bw, fill)
    # Slight softening: cracks are shadowed grooves, not pen strokes.
    return _blur121(np.asarray(m, np.float32) / 255)


def _line_mask(rng, s, width):
    """Full-length, nearly axis-aligned straight line (joint or formwork seam)."""
    m = Image.new("L", (s, s), 0)
    ang = rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.05)
    cx, cy = rng.uniform(0.15, 0.85, 2) * s
    dx, dy = 1.5 * s * math.cos(ang), 1.5 * s * math.sin(ang)
    ImageDraw.Draw(m).line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=max(1, int(round(width))))
    return _blur121(np.asarray(m, np.float32) / 255), (cx, cy, ang)


def _distract(rng, s, lum, kinds):
    """Apply non-crack defects to a luminance field in place-ish and return it."""
    yy, xx = _grid(s)
    for kind in kinds:
        if kind == "joint":  # sawn or formed joint: straight dark groove
            m, _ = _line_mask(rng, s, rng.uniform(1.5, 9))
            lum = lum * (1 - rng.uniform(0.3, 0.7) * m)
        elif kind == "edge":  # formwork edge: brightness step along a straight seam
            m, (cx, cy, ang) = _line_mask(rng, s, rng.uniform(1, 3))
            side = ((xx - cx) * math.sin(ang) - (yy - cy) * math.cos(ang)) > 0
            lum = lum * np.where(side, np.float32(rng.uniform(0.75, 0.92)), np.float32(1)) * (1 - rng.uniform(0.2, 0.5) * m)
        elif kind == "stain":  # water/rust stains: soft low-frequency dark blobs
            # two octaves so the blobs look organic rather than grid-aligned
            n = _smooth_noise(rng, s, int(rng.integers(3, 6))) + 0.35 * _smooth_noise(rng, s, 11)
            blob = np.clip((n - rng.uniform(0.75, 0.95)) * 4, 0, 1)
            lum = lum * (1 - rng.uniform(0.15, 0.45) * blob)
        elif kind == "shadow":  # soft-edged shadow from a half-plane
            ang = rng.uniform(0, 2 * math.pi)
            dist = (xx - s / 2) * math.cos(ang) + (yy - s / 2) * math.sin(ang) - rng.uniform(-0.3, 0.3) * s
            soft = 1 / (1 + np.exp(-dist / rng.uniform(3, 25)))
            lum = lum * (1 - rng.uniform(0.2, 0.5) * soft)
        elif kind == "scratch":  # short straight scratches, lighter or darker than the surface
            m = Image.new("L", (s, s), 128)  # signed mask: 128 = no change
            d = ImageDraw.Draw(m)
            for _ in range(int(rng.integers(1, 5))):
                cx, cy, ang = *rng.uniform(0.1, 0.9, 2) * s, rng.uniform(0, math.pi)
                half = rng.uniform(0.08, 0.35) * s
                dx, dy = half * math.cos(ang), half * math.sin(ang)
                fill = int(128 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.4) * 127)
                d.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=int(rng.integers(1, 3)))
            lum = lum * (1 + _blur121(np.asarray(m, np.float32) - 128) / 127)
    return lum


def render_sample(rng: np.random.Generator, crack: bool, size: int = 227) -> tuple[Image.Image, int]:
    """Render one image; returns (RGB image, JPEG quality to save it with)."""
    s = size
    lum = _background(rng, s)
    if crack:
        kinds = [k for k, p in (("stain", 0.2), ("shadow", 0.2), ("joint", 0.08), ("scratch", 0.1)) if rng.random() < p]
        lum = _distract(rng, s, lum, kinds)
        lum = lum * (1 - _crack_mask(rng, s))
    else:
        # ~25 % plain, the rest one or two distractors that mimic a crack's effect
        # on global statistics (darkening + higher variance).
        if rng.random() < 0.25:
            kinds = [k for k, p in (("stain", 0.2), ("shadow", 0.2)) if rng.random() < p]
        else:
            pool = ["joint", "edge", "stain", "shadow", "scratch"]
            kinds = list(rng.choice(pool, size=int(rng.integers(1, 3)), replace=False, p=[0.25, 0.2, 0.2, 0.15, 0.2]))
        lum = _distract(rng, s, lum, kinds)
    # Optical blur of varying strength (both classes).
    b = rng.uniform(0, 1)
    if b > 0.3:
        lum = (1 - b) * lum + b * _blur121(lum, 1 + int(b > 0.8))
    # Base tone and colour cast: grey to beige, plus small independent jitter.
    tone = rng.uniform(0.4, 0.82)
    warm = rng.uniform(-0.02, 0.12)
    colour = tone * np.array([1 + warm, 1 + 0.35 * warm, 1 - 0.6 * warm], np.float32)
    colour *= 1 + rng.normal(0, 0.012, 3).astype(np.float32)
    contrast = rng.uniform(0.7, 1.4)  # global contrast stretch around the mean
    lum = 1 + contrast * (lum - lum.mean())
    # Colourise through a 4096-entry lookup table: one gather instead of float
    # arithmetic on the (s, s, 3) array.
    lut = np.clip(_lut_index()[:, None] * colour * 255 + 0.5, 0, 255).astype(np.uint8)
    idx = np.clip(lum * 2048, 0, 4095).astype(np.intp)
    rgb = np.take(lut, idx, axis=0)  # ~4x faster than lut[idx] fancy indexing
    return Image.fromarray(rgb, "RGB"), int(rng.integers(60, 96))


def _render_to(args):
    root, cls_idx, i, seed, size = args
    rng = np.random.default_rng([seed, cls_idx, i])
    img, q = render_sample(rng, crack=(cls_idx == 0), size=size)
    img.save(Path(root) / CLASSES[cls_idx] / f"{i + 1:05d}.jpg", "JPEG", quality=q)


def _is_complete(root: Path, params: dict) -> bool:
    try:
        if json.loads((root / META).read_text()) != params:
            return False
    except (OSError, ValueError):
        return False
    n = params["per_class"]
    return all(
        len(list((root / c).glob("*.jpg"))) == n and (root / c / f"{n:05d}.jpg").is_file() for c in CLASSES
    )


def generate(root, per_class: int = 1000, seed: int = 0, size: int = 227, overwrite: bool = False,
             workers: int = 1) -> dict:
    """Write ``per_class`` images to ``root/Positive`` and ``root/Negative``.

    Skips work if ``root`` already holds a complete dataset with the same
    parameters (recorded in ``synthetic.json``) unless ``overwrite``.  Output is
    identical for any ``workers`` count because every image has its own seed.
    """
    root = Path(root)
    params = {"version": VERSION, "per_class": int(per_class), "seed": int(seed), "size": int(size)}
    summary = {"root": str(root), "counts": {c: int(per_class) for c in CLASSES}, **params}
    if not overwrite and _is_complete(root, params):
        return {**summary, "generated": False, "seconds": 0.0}
    t0 = time.perf_counter()
    (root / META).unlink(missing_ok=True)  # written last, so a crash never looks complete
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for old in (root / c).glob("*.jpg"):  # stale files from a larger/other run
            old.unlink()
    jobs = [(str(root), k, i, int(seed), int(size)) for k in range(len(CLASSES)) for i in range(per_class)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_to, jobs, chunksize=64):
                pass
    else:
        for job in jobs:
            _render_to(job)
    (root / META).write_text(json.dumps(params, indent=2) + "\n")
    return {**summary, "generated": True, "seconds": round(time.perf_counter() - t0, 3)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Generate a synthetic concrete-crack dataset.")
    p.add_argument("--out", required=True, help="output folder (Positive/ and Negative/ are created)")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=227)
    p.add_argument("--workers", type=int, default=1, help="processes; output is identical for any value")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    r = generate(a.out, a.per_class, a.seed, a.size, a.overwrite, a.workers)
    what = "generated" if r["generated"] else "already complete, skipped"
    print(f"synthetic: {what} {r['per_class']}x{len(CLASSES)} images ({r['size']}px, seed {r['seed']}) "
          f"in {r['root']} [{r['seconds']:.1f}s]")
    return r


if __name__ == "__main__":
    main()
