"""Rendering of the synthetic stand-in for "Concrete Crack Images for Classification".

The public dataset (Özgenel, 2018) holds 227x227 RGB JPEGs of concrete walls in
``Positive/`` (crack) and ``Negative/`` (no crack).  CI cannot download it, so
this module renders a look-alike with the same layout, built to be learnable
from *shape* but not from global colour statistics.

Design
------
* Each image has its own RNG seeded with ``[seed, class, index]``, so output is
  independent of order and worker count, and a seed gives byte-identical JPEGs.
* Background: luminance field (uneven lighting, vignetting, mottling, aggregate,
  grain, pores) x tone x colour cast (grey to beige), optical blur, JPEG
  quality 60-95 -- all drawn independently of the label.
* Positives: tortuous cracks along a random walk (heading jitter around a slowly
  drifting direction), width varying along the path, tapering branches, now
  and then a second crack.  Thin cracks are dark so they survive 227 -> 96 px.
* Negatives: straight joints, formwork edges, scratches (hard, line-like) and
  broad stains/shadows.  A crack about doubles an image's pixel variance; a
  stain or shadow adds about as much, so nearly every non-plain negative has
  one (or both).  Positives get them too (25 %/35 %), so "shadow => no crack"
  is only a weak cue.  Logistic regression on mean/std: ~0.60 (chance 0.50).
* Tone mapping normalises each image around its mean (auto-exposure).
* Fast (~350 img/s on one core): float32 numpy, noise from two tiny matmuls,
  a 3-tap numpy blur (PIL's RGB GaussianBlur alone costs more than the rest).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("Positive", "Negative")  # class folders; label 0 (the first) is the crack class


@functools.lru_cache(maxsize=64)
def _interp_matrix(s, cells):
    """(s, cells) Catmull-Rom upsampling weights (and transpose), cached per shape."""
    u = (np.arange(s) + 0.5) * cells / s - 0.5
    i0 = np.floor(u).astype(int)
    w = np.zeros((s, cells))
    for k in (-1, 0, 1, 2):
        x = np.abs(u - (i0 + k))
        kern = np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2)
        np.add.at(w, (np.arange(s), np.clip(i0 + k, 0, cells - 1)), np.where(x < 2, kern, 0))
    return w.astype(np.float32), np.ascontiguousarray(w.T, np.float32)


def smooth_noise(rng, size, cells):
    """Value noise in ~[0, 1]: a cells x cells random grid upsampled bicubically."""
    w, wt = _interp_matrix(size, cells)
    a = w @ rng.random((cells, cells), dtype=np.float32)
    out = np.empty((size, size), np.float32)
    # Row blocks keep each GEMM below OpenBLAS's threading threshold: a threaded
    # GEMM this small can stall for milliseconds when the other core is busy.
    for i in range(0, size, 16):
        np.matmul(a[i:i + 16], wt, out=out[i:i + 16])
    return out


def blur121(a, passes=1):
    """Separable [1,2,1]/4 blur with edge replication; cheap stand-in for a Gaussian."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        a = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
        a = 0.25 * a[:, :-2] + 0.5 * a[:, 1:-1] + 0.25 * a[:, 2:]
    return a


@functools.lru_cache(maxsize=4)
def _grid(s):
    """Pixel coordinate grids (yy, xx), cached: rebuilding them per image is measurable."""
    return tuple(np.mgrid[0:s, 0:s].astype(np.float32))


def background(rng, s, scale=1):
    """Luminance field (~1.0 on average) of a bare concrete surface.

    ``scale``: the field spans ``scale`` x ``scale`` patches (a scene); texture
    keeps its size in pixels, lighting spans the whole field."""
    yy, xx = (g / s for g in _grid(s))
    ang = rng.uniform(0, 2 * math.pi)
    # Uneven lighting: gradient, very-low-frequency blotches, lens vignetting.
    light = 1 + rng.uniform(0, 0.4) * ((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang))
    light += rng.uniform(0, 0.35) * (smooth_noise(rng, s, int(rng.integers(2, 4))) - 0.5)
    light -= rng.uniform(0, 0.3) * 2 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    tex = rng.uniform(0.3, 1.7)  # texture strength of this surface
    field = 1 + tex * 0.12 * (smooth_noise(rng, s, int(rng.integers(5, 14)) * scale) - 0.5)
    # Aggregate: thresholded mid-frequency noise gives irregular lighter/darker patches.
    agg = smooth_noise(rng, s, int(rng.integers(20, 45)) * scale)
    field += tex * rng.uniform(-0.06, 0.06) * np.clip((agg - rng.uniform(0.6, 0.85)) * 8, 0, 1)
    # Fine grain (uniform noise: half the cost of Gaussian, same look after JPEG).
    # Kept moderate: strong grain and many dark pores drown thin cracks at 96 px
    # and measurably slowed the from-scratch CNN.
    field += rng.uniform(0.02, 0.14) * (rng.random((s, s), dtype=np.float32) - 0.5)
    pores = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(pores)
    for _ in range(int(rng.integers(0, 30 * tex)) * scale * scale):
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.6, 2.2)
        d.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(40, 150)))
    return light * field * (1 - 0.6 / 255 * np.asarray(pores, np.float32))


def _walk(rng, s, start, heading, length, tort, step=3.5):
    """Random walk: the heading jitters around a slowly drifting main direction,
    giving local zig-zag (tortuosity) plus gentle meander -- never a straight line."""
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
    """Main crack path through a good part of the image.  Paths that only clip a
    corner or hug the border are retried: at 96 px they are label noise."""
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
        inside = sum(0 <= x <= s and 0 <= y <= s for x, y in pts)
        central = sum(0.15 * s <= x <= 0.85 * s and 0.15 * s <= y <= 0.85 * s for x, y in pts)
        if 3.5 * inside >= 0.6 * s and 3.5 * central >= 0.35 * s:
            break
    return pts


def _stroke(d, pts, widths, fill):
    """Polyline with per-vertex width; round caps hide the seams between segments."""
    for (p, q), w in zip(zip(pts[:-1], pts[1:]), widths):
        d.line((p, q), fill=fill, width=max(1, int(round(w))))
        if w > 2:
            d.ellipse((q[0] - w / 2, q[1] - w / 2, q[0] + w / 2, q[1] + w / 2), fill=fill)


def crack_mask(rng, s):
    """Darkening mask in [0, 1) of a crack system: main path, branches, maybe a 2nd crack."""
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    for system in range(1 + int(rng.random() < 0.15)):
        if rng.random() < 0.05:  # hairline: thin but dark, so it is still visible at 96 px
            w0, depth = rng.uniform(1.5, 2.5), rng.uniform(0.8, 0.92)
        else:  # width log-uniform; very wide cracks would add more variance than any distractor
            w0, depth = math.exp(rng.uniform(math.log(4.0), math.log(9.0))), rng.uniform(0.65, 0.9)
        w0 *= 0.6 if system else 1.0
        tort = rng.uniform(0.2, 0.5)
        pts = _crack_path(rng, s, tort)
        n = len(pts)
        # Width varies smoothly along the crack, with per-vertex roughness on top.
        prof = np.interp(np.arange(n), np.linspace(0, n, 6), rng.uniform(0.5, 1.3, 6))
        widths = w0 * prof * rng.uniform(0.75, 1.25, n)
        fill = int(255 * depth)
        _stroke(d, pts, widths, fill)
        for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):  # branches: thinner, shorter, tapering
            k = int(rng.integers(1, max(2, n - 1)))
            h = math.atan2(pts[k][1] - pts[k - 1][1], pts[k][0] - pts[k - 1][0])
            h += rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)
            bp = _walk(rng, s, pts[k], h, rng.uniform(0.15, 0.6) * s, tort)
            _stroke(d, bp, np.linspace(1, 0.4, len(bp)) * max(1.5, widths[k] * rng.uniform(0.3, 0.7)), fill)
    return blur121(np.asarray(m, np.float32) / 255)  # soft edges: a groove, not a pen stroke


def line_mask(rng, s, width):
    """Full-length, nearly axis-aligned straight line (joint or formwork seam)."""
    m = Image.new("L", (s, s), 0)
    ang = rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.05)
    cx, cy = rng.uniform(0.15, 0.85, 2) * s
    dx, dy = 1.5 * s * math.cos(ang), 1.5 * s * math.sin(ang)
    ImageDraw.Draw(m).line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=max(1, int(round(width))))
    return blur121(np.asarray(m, np.float32) / 255), (cx, cy, ang)


def distract(rng, s, lum, kinds):
    """Apply non-crack defects to a luminance field."""
    yy, xx = _grid(s)
    for kind in kinds:
        if kind == "joint":  # sawn/formed joint: straight, uniform, lighter than a crack
            m, _ = line_mask(rng, s, rng.uniform(2, 8))
            lum = lum * (1 - rng.uniform(0.1, 0.3) * m)
        elif kind == "edge":  # formwork edge: brightness step along a straight seam
            m, (cx, cy, ang) = line_mask(rng, s, rng.uniform(1, 3))
            side = ((xx - cx) * math.sin(ang) - (yy - cy) * math.cos(ang)) > 0
            step = np.where(side, np.float32(rng.uniform(0.65, 0.9)), np.float32(1))
            lum = lum * step * (1 - rng.uniform(0.1, 0.3) * m)
        elif kind == "stain":  # water/rust stains: soft dark blobs (two octaves: organic shapes)
            n = smooth_noise(rng, s, int(rng.integers(3, 6))) + 0.35 * smooth_noise(rng, s, 11)
            lum = lum * (1 - rng.uniform(0.2, 0.55) * np.clip((n - rng.uniform(0.75, 0.95)) * 4, 0, 1))
        elif kind == "shadow":  # soft- or hard-edged shadow over part of the image
            ang = rng.uniform(0, 2 * math.pi)
            dist = (xx - s / 2) * math.cos(ang) + (yy - s / 2) * math.sin(ang) - rng.uniform(-0.3, 0.3) * s
            # (clipped: exp overflows on scene-sized fields; 1 / (1 + e^60) is 0 in float32 anyway)
            lum = lum * (1 - rng.uniform(0.25, 0.55) / (1 + np.exp(np.clip(-dist / rng.uniform(3, 25), -60, 60))))
        elif kind == "scratch":  # short straight scratches, lighter or darker than the surface
            m = Image.new("L", (s, s), 128)  # signed mask: 128 = no change
            d = ImageDraw.Draw(m)
            for _ in range(int(rng.integers(1, 5))):
                cx, cy, ang = *rng.uniform(0.1, 0.9, 2) * s, rng.uniform(0, math.pi)
                dx, dy = rng.uniform(0.08, 0.35) * s * np.array([math.cos(ang), math.sin(ang)])
                fill = int(128 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.4) * 127)
                d.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=int(rng.integers(1, 3)))
            lum = lum * (1 + blur121(np.asarray(m, np.float32) - 128) / 127)
    return lum


def render_sample(rng: np.random.Generator, crack: bool, size: int = 227) -> tuple[Image.Image, int]:
    """Render one image; returns (RGB image, JPEG quality to save it with)."""
    s = size
    lum = background(rng, s)
    if crack:
        kinds = [k for k, p in (("stain", 0.25), ("shadow", 0.35)) if rng.random() < p]
        lum = distract(rng, s, lum, kinds) * (1 - crack_mask(rng, s))
    else:
        if rng.random() < 0.1:  # plain surface, now and then a stain or shadow
            kinds = [k for k, p in (("stain", 0.15), ("shadow", 0.15)) if rng.random() < p]
        else:  # a broad defect that adds crack-like variance, often a line-like one on top
            kinds = [("stain", "shadow")[rng.integers(2)]]
            if rng.random() < 0.5:  # both: offsets the stains/shadows positives also get
                kinds.append("shadow" if kinds[0] == "stain" else "stain")
            kinds.append(str(rng.choice(["joint", "edge", "scratch", "-"], p=[0.3, 0.25, 0.15, 0.3])))  # "-": none
        lum = distract(rng, s, lum, kinds)
    return Image.fromarray(develop(rng, lum), "RGB"), int(rng.integers(60, 96))


def develop(rng: np.random.Generator, lum: np.ndarray, tone=(0.4, 0.82), warm=(-0.02, 0.12)) -> np.ndarray:
    """The camera's part: optical blur, auto-exposure, colour cast, tone map -> uint8 RGB.

    ``tone``, ``warm``: ranges of the mean brightness and of the beige cast (a surface's look)."""
    b = rng.uniform(0, 1)  # optical blur of varying strength
    if b > 0.3:
        lum = (1 - b) * lum + b * blur121(lum, 1 + int(b > 0.8))
    # Auto-exposure: normalise around the mean, then a mild contrast stretch.  (A
    # wide stretch range hides std better but made the CNN rely on luck.)
    lum = 1 + rng.uniform(0.85, 1.2) * (lum - lum.mean())
    warm = rng.uniform(*warm)  # colour cast: neutral grey to beige
    colour = rng.uniform(*tone) * np.array([1 + warm, 1 + 0.35 * warm, 1 - 0.6 * warm], np.float32)
    colour *= 1 + rng.normal(0, 0.012, 3).astype(np.float32)
    # Tone-map through a 4096-entry lookup table (soft highlight shoulder instead
    # of hard clipping); one np.take is far cheaper than float maths on (s, s, 3).
    v = np.arange(4096, dtype=np.float32)[:, None] / 2048 * colour
    v = np.where(v < 0.85, v, 0.85 + 0.15 * np.tanh((v - 0.85) / 0.15))
    lut = np.clip(v * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.take(lut, np.clip(lum * 2048, 0, 4095).astype(np.intp), axis=0)
