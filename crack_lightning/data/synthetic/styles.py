"""Surface styles of ``kind="binary"``: the same crack / no-crack task on other surfaces (domains).

``concrete`` is :mod:`.render`'s picture, unchanged.  The others, built from its parts (one
:class:`Style` each in :data:`STYLES`), are tuned so that a model trained on concrete misses
cracks on them at its threshold (recall, not precision, fails), while each is learnable:

* ``asphalt``: dark bluish granular pavement; fainter, ravelled cracks, now and then a network
  (alligator cracking); oil stains, tyre marks, patch edges, shadows.
* ``painted``: a smooth wall in a paint colour (roller stipple, brush streaks); hairline cracks
  of straight runs and sharp kinks, or craquelure, with a lit edge; drips, scuffs, nail holes, tape.
* ``low_light``: concrete under one lamp: light fall-off, dim exposure, sensor noise, low JPEG quality.

Each image's RNG is seeded with ``[seed, class, index, stream]`` (the style's own ``stream``), so
output is independent of order and workers, and differs from concrete's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from crack_lightning import CrackLightningError
from crack_lightning.data.synthetic import render
from crack_lightning.data.synthetic.render import blur121, smooth_noise


def _light(rng, s, strength):
    """Uneven lighting ~1.0: a gradient and very-low-frequency blotches."""
    yy, xx = (g / s for g in render._grid(s))
    ang = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0, strength) * ((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang))
    return light + rng.uniform(0, strength) * (smooth_noise(rng, s, int(rng.integers(2, 4))) - 0.5)


def _streaks(rng, s, along, across):
    """Anisotropic noise in ~[0, 1]: ``across`` cells one way, ``along`` the other (brush marks)."""
    wa, _ = render._interp_matrix(s, across)
    _, wt = render._interp_matrix(s, along)
    a = wa @ rng.random((across, along), dtype=np.float32) @ wt
    return a if rng.random() < 0.5 else np.ascontiguousarray(a.T)


def _network(rng, s, cells, width, radius):
    """Mask in [0, 1] of a crack network (Voronoi edges, domain-warped so they wander) that fades
    out over an irregular patch of ``radius`` x ``s`` around a point near the middle."""
    yy, xx = render._grid(s)
    warp = 3 + 0.02 * s
    wx, wy = (warp * (smooth_noise(rng, s, max(4, s // 12)) - 0.5) for _ in range(2))
    cx, cy = rng.uniform(0.35, 0.65, 2) * s
    pts = np.stack([cx, cy]) + rng.uniform(-1.3, 1.3, (cells, 2)) * radius * s
    d = np.hypot((xx + wx)[..., None] - pts[:, 0], (yy + wy)[..., None] - pts[:, 1])
    d.partition(1, axis=-1)
    edge = np.clip(1 - (d[..., 1] - d[..., 0]) / width, 0, 1)
    region = np.hypot(xx - cx, yy - cy) / (radius * s) + 0.5 * (smooth_noise(rng, s, 4) - 0.5)
    return (edge * np.clip((1.1 - region) * 3, 0, 1)).astype(np.float32)


def _kinked_path(rng, s):
    """A hairline crack's path: straight runs with sharp turns, jagged on a fine scale."""
    t = rng.uniform(0.15, 0.85) * s
    x, y = [(t, -3.0), (s + 3.0, t), (t, s + 3.0), (-3.0, t)][rng.integers(4)]
    tx, ty = rng.uniform(0.35, 0.65, 2) * s
    base, pts = math.atan2(ty - y, tx - x), [(x, y)]
    while -5 <= x <= s + 5 and -5 <= y <= s + 5 and len(pts) < 400:
        h, run = base + rng.uniform(-0.9, 0.9), rng.uniform(0.08, 0.3) * s
        for _ in range(max(1, int(run / 2.5))):
            x, y = x + 2.5 * math.cos(h) + rng.normal(0, 0.6), y + 2.5 * math.sin(h) + rng.normal(0, 0.6)
            pts.append((x, y))
        base += rng.normal(0, 0.25)
    return pts


# ---- cracks: (rng, s, lum) -> lum ----------------------------------------------------------
def _asphalt_crack(rng, s, lum):
    if rng.random() < 0.3:  # alligator cracking: a network of cells
        m = _network(rng, s, int(rng.integers(8, 16)), rng.uniform(4, 6), rng.uniform(0.3, 0.45))
    else:
        img = Image.new("L", (s, s), 0)
        d, tort = ImageDraw.Draw(img), rng.uniform(0.1, 0.35)
        pts = render._crack_path(rng, s, tort)
        render._stroke(d, pts, rng.uniform(4, 8) * rng.uniform(0.7, 1.3, len(pts)), 255)
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            k = int(rng.integers(1, max(2, len(pts) - 1)))
            bp = render._walk(rng, s, pts[k], rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.5) * s, tort)
            render._stroke(d, bp, np.linspace(3, 1.2, len(bp)), 255)
        m = blur121(np.asarray(img, np.float32) / 255)
    ravel = 0.6 + 0.4 * smooth_noise(rng, s, max(4, s // 8))  # worn, broken-up edges
    return lum * (1 - rng.uniform(0.45, 0.65) * m * ravel)


def _painted_crack(rng, s, lum):
    if rng.random() < 0.35:  # craquelure: a fine network over part of the wall
        m = _network(rng, s, int(rng.integers(10, 24)), rng.uniform(1.5, 2.2), rng.uniform(0.25, 0.45))
    else:
        img = Image.new("L", (s, s), 0)
        d = ImageDraw.Draw(img)
        for i in range(1 + int(rng.random() < 0.3)):
            pts = _kinked_path(rng, s)
            d.line(pts, fill=255, width=int(rng.integers(2, 4)) - i, joint="curve")
        m = np.asarray(img, np.float32) / 255
    m = 0.5 * m + 0.5 * blur121(m)
    ang, off = rng.uniform(0, 2 * math.pi), int(rng.integers(1, 3))  # the lifted edge facing the light
    lit = np.roll(blur121(m, 2), (round(off * math.sin(ang)), round(off * math.cos(ang))), (0, 1))
    return lum * (1 - rng.uniform(0.35, 0.6) * m) * (1 + rng.uniform(0.15, 0.4) * np.clip(lit - m, 0, 1))


# ---- surfaces: (rng, s) -> lum ~1 ----------------------------------------------------------
def _asphalt(rng, s):
    # Stronger stones read as cracks to a concrete model (the dark binder between them is a
    # network), so they are faint and the grain does the rest: precision would fail, not recall.
    lum = _light(rng, s, 0.3) * (1 + 0.1 * (smooth_noise(rng, s, int(rng.integers(4, 9))) - 0.5))
    stones = smooth_noise(rng, s, max(6, int(s / rng.uniform(3, 5))))  # chippings a few px across
    lum = lum * (1 + rng.uniform(0.1, 0.2) * np.clip((stones - rng.uniform(0.6, 0.75)) * 5, 0, 1))
    return lum * (1 + rng.uniform(0.12, 0.25) * (rng.random((s, s), dtype=np.float32) - 0.5))


def _painted(rng, s):
    lum = _light(rng, s, 0.25)
    lum = lum * (1 + rng.uniform(0.01, 0.035) * (smooth_noise(rng, s, max(6, s // 3)) - 0.5))  # roller stipple
    lum = lum * (1 + rng.uniform(0.01, 0.04) * (_streaks(rng, s, 3, max(6, s // 4)) - 0.5))  # brush marks
    return lum * (1 + rng.uniform(0.01, 0.03) * (rng.random((s, s), dtype=np.float32) - 0.5))


def _spotlit(rng, s):
    """Concrete lit by one lamp: light falls off from a point (maybe outside the picture)."""
    yy, xx = (g / s for g in render._grid(s))
    cx, cy = rng.uniform(-0.3, 1.3, 2)
    fall = 1 / (1 + ((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(0.1, 0.4) ** 2)
    return render.background(rng, s) * (0.3 + 0.7 * fall / fall.max())


# ---- distractors: (rng, s, lum) -> lum -----------------------------------------------------
def _tyre(rng, s, lum):
    """A tyre mark: a broad, soft, dark straight band across the picture."""
    m, depth, width = Image.new("L", (s, s), 0), rng.uniform(0.15, 0.35), rng.uniform(0.08, 0.2) * s
    ang, (cx, cy) = rng.uniform(0, math.pi), rng.uniform(0.1, 0.9, 2) * s
    dx, dy = 1.5 * s * math.cos(ang), 1.5 * s * math.sin(ang)
    ImageDraw.Draw(m).line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=max(1, int(width)))
    return lum * (1 - depth * blur121(np.asarray(m, np.float32) / 255, 5))


def _strokes(rng, s, lum, n, length, width, amount, vertical=False):
    """Short straight strokes (drips, scuffs, tape), darker or lighter."""
    m = Image.new("L", (s, s), 128)
    d = ImageDraw.Draw(m)
    for _ in range(n):
        cx, cy = rng.uniform(0.1, 0.9, 2) * s
        ang = math.pi / 2 + rng.normal(0, 0.05) if vertical else rng.uniform(0, math.pi)
        dx, dy = rng.uniform(*length) * s * np.array([math.cos(ang), math.sin(ang)])
        fill = int(128 + rng.choice([-1, 1]) * rng.uniform(*amount) * 127)
        d.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=int(rng.integers(*width)))
    return lum * (1 + blur121(np.asarray(m, np.float32) - 128, 2) / 127)


def _holes(rng, s, lum):  # nail holes and screw pops: small dark dots with a lit rim
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    for _ in range(int(rng.integers(2, 12))):
        x, y, r = *rng.uniform(0.05, 0.95, 2) * s, rng.uniform(1, 3)
        d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    h = blur121(np.asarray(m, np.float32) / 255)
    return lum * (1 - 0.5 * h + 0.3 * np.clip(np.roll(blur121(h, 2), 2, 0) - h, 0, 1))


def _concrete(kind):  # one of render.distract's kinds
    return lambda rng, s, lum: render.distract(rng, s, lum, [kind])


DISTRACTORS: dict[str, Callable] = {  # (rng, s, lum) -> lum
    **{k: _concrete(k) for k in ("stain", "shadow", "edge", "joint", "scratch")}, "tyre": _tyre, "holes": _holes,
    "drip": lambda rng, s, lum: _strokes(rng, s, lum, int(rng.integers(1, 4)), (0.05, 0.2), (3, 7), (0.05, 0.15), True),
    "scuff": lambda rng, s, lum: _strokes(rng, s, lum, int(rng.integers(1, 4)), (0.03, 0.12), (4, 9), (0.1, 0.25)),
    "tape": lambda rng, s, lum: _strokes(rng, s, lum, 1, (0.5, 0.8), (12, 25), (0.03, 0.08)),
}


# ---- cameras and paints: (rng, uint8 RGB) -> uint8 RGB ---------------------------------------
PAINTS = np.array([(1, 1, 1), (1, 0.97, 0.88), (0.9, 0.95, 1.05), (0.92, 1, 0.9), (1.05, 0.9, 0.82), (0.95, 0.92, 1)])


def _paint(rng, rgb):
    colour = PAINTS[rng.integers(len(PAINTS))] * (1 + rng.normal(0, 0.02, 3))
    return np.clip(rgb * colour.astype(np.float32), 0, 255).astype(np.uint8)


def _sensor(rng, rgb):
    """A dark photo's noise: shot noise (grows with the signal), read noise, colour noise."""
    v = rgb.astype(np.float32)
    grey = rng.normal(0, 1, v.shape[:2]).astype(np.float32)[..., None]
    chroma = rng.normal(0, 1, v.shape).astype(np.float32)
    sigma = rng.uniform(0.3, 0.7) * np.sqrt(v + 1) + rng.uniform(1.5, 4)
    return np.clip(v + sigma * (0.7 * grey + 0.5 * chroma), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Style:
    """One surface: its parts, and which distractors each class gets.  Negatives get one of
    ``broad`` (a second with probability 0.5), then one of ``lines`` by weight ("-": none);
    positives get each of ``on_cracks`` with its probability, then the crack."""
    about: str
    stream: int                  # appended to the per-image seed, once chosen never changed
    surface: Callable = None
    crack: Callable = None
    broad: tuple = ()
    lines: dict = field(default_factory=dict)
    on_cracks: dict = field(default_factory=dict)
    tone: tuple = (0.4, 0.82)    # develop(): mean brightness and beige cast
    warm: tuple = (-0.02, 0.12)
    finish: Callable | None = None
    quality: tuple = (60, 96)
    version: int = 1             # in synthetic.json: bump it whenever the style's pictures change


STYLES: dict[str, Style] = {
    "concrete": Style("grey to beige concrete, dark tortuous cracks (render.py, the default)", 0),
    "asphalt": Style("dark granular pavement, fainter ravelled cracks, oil stains/tyre marks", 1,
                     _asphalt, _asphalt_crack, ("stain", "shadow", "tyre"),
                     {"edge": 0.3, "-": 0.7}, {"stain": 0.2, "shadow": 0.3, "tyre": 0.15},
                     tone=(0.18, 0.34), warm=(-0.06, 0.01)),
    "painted": Style("smooth painted wall, kinked hairline cracks or craquelure, drips/scuffs/holes", 2,
                     _painted, _painted_crack, ("shadow", "stain", "tape"),
                     {"drip": 0.25, "scuff": 0.25, "holes": 0.25, "scratch": 0.1, "-": 0.15},
                     {"shadow": 0.3, "holes": 0.2, "drip": 0.15},
                     tone=(0.62, 0.82), warm=(-0.02, 0.03), finish=_paint, quality=(70, 96)),
    "low_light": Style("concrete under a spotlight: light fall-off, dim exposure, sensor noise", 3,
                       _spotlit, lambda rng, s, lum: lum * (1 - render.crack_mask(rng, s)), ("stain", "shadow"),
                       {"joint": 0.3, "edge": 0.25, "scratch": 0.15, "-": 0.3}, {"stain": 0.25, "shadow": 0.35},
                       tone=(0.2, 0.4), finish=_sensor, quality=(40, 80)),
}
STYLE_NAMES = tuple(STYLES)


def check_style(style) -> str:
    """``style`` if it names a style (None: concrete); else a one-line error."""
    style = "concrete" if style is None else str(style)
    if style not in STYLES:
        raise CrackLightningError(f"style={style!r}: choose {', '.join(STYLE_NAMES)}")
    return style


def image_seed(seed: int, cls_idx: int, index: int, style: str = "concrete") -> list[int]:
    """The RNG seed of one image: concrete's ``[seed, class, index]`` as ever, others' with their stream."""
    return [seed, cls_idx, index] + ([STYLES[style].stream] if style != "concrete" else [])


def render_styled(rng: np.random.Generator, crack: bool, size: int, style: str) -> tuple[Image.Image, int]:
    """One image of ``style`` (not concrete: :func:`.render.render_sample`, which this module builds on);
    (RGB image, JPEG quality)."""
    st, s = STYLES[style], size
    lum = st.surface(rng, s)
    if crack:
        for kind in [k for k, p in st.on_cracks.items() if rng.random() < p]:
            lum = DISTRACTORS[kind](rng, s, lum)
        lum = st.crack(rng, s, lum)
    else:
        kinds = [st.broad[rng.integers(len(st.broad))]]
        if len(st.broad) > 1 and rng.random() < 0.5:
            kinds.append(str(rng.choice([k for k in st.broad if k != kinds[0]])))
        kinds.append(str(rng.choice(list(st.lines), p=list(st.lines.values()))))
        for kind in kinds:
            lum = lum if kind == "-" else DISTRACTORS[kind](rng, s, lum)
    rgb = render.develop(rng, lum, st.tone, st.warm)
    rgb = st.finish(rng, rgb) if st.finish else rgb
    return Image.fromarray(rgb, "RGB"), int(rng.integers(*st.quality))
