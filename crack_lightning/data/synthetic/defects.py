"""Pictures of ``kind="multiclass"``: one kind of surface defect per image, one folder per kind.

Every class starts from :func:`.render.background` and ends in :func:`.render.develop`, whose
auto-exposure normalises each image around its mean, so the classes differ in *shape*, not in
brightness: a tortuous crack of varying width, straight evenly spaced joints of one width,
diffuse blotches, a rough pit with a shadowed rim, or bare concrete.  Shadows and scratches
fall on every class alike, so they are no cue.  Each image's RNG is seeded with
``[seed, 100 + DEFECTS.index(name), index]``: a class looks the same in any class set.

>>> check_classes("crack,stain,clean")
('crack', 'stain', 'clean')
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from crack_lightning import CrackLightningError
from crack_lightning.data.synthetic.render import blur121, smooth_noise, background, crack_mask, develop, distract
from crack_lightning.utils.parallel import parallel_map

DEFECTS = ("crack", "joint", "stain", "spalling", "clean")  # the classes this module can draw
DEFAULT_CLASSES = ("crack", "joint", "stain", "clean")


def check_classes(classes) -> tuple[str, ...]:
    """``classes`` (names, or one comma-separated string) as a tuple; a one-line error if unusable."""
    names = tuple(str(c).strip() for c in (classes.split(",") if isinstance(classes, str) else classes))
    choices = ", ".join(DEFECTS)
    for c in names:
        if c not in DEFECTS:
            raise CrackLightningError(f"classes: unknown class {c!r}; choose at least 2 of {choices}")
    if len(set(names)) != len(names):
        raise CrackLightningError(f"classes={list(names)}: a class is named twice; choose each of {choices} once")
    if len(names) < 2:
        raise CrackLightningError(f"classes={list(names)}: give at least 2 classes of {choices}")
    return names


def _joints(rng, s, lum):
    """Saw-cut or formwork joints: 1-3 full-length straight grooves, evenly spaced, all of one
    width -- where a crack wanders and changes width -- now and then crossed by a second set."""
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    ang0 = float(rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.04))
    width = max(2, int(round(rng.uniform(3, 8))))
    for crossing in range(1 + int(rng.random() < 0.3)):
        ang = ang0 + crossing * math.pi / 2
        n = int(rng.integers(1, 4))
        gap = rng.uniform(0.25, min(0.45, 0.8 / max(1, n - 1))) * s
        first = rng.uniform(0.1 * s, 0.9 * s - (n - 1) * gap)
        ux, uy, nx, ny = math.cos(ang), math.sin(ang), -math.sin(ang), math.cos(ang)
        for k in range(n):
            t = first + k * gap - s / 2  # offset across the lines, from the centre
            cx, cy = s / 2 + t * nx, s / 2 + t * ny
            d.line((cx - 1.5 * s * ux, cy - 1.5 * s * uy, cx + 1.5 * s * ux, cy + 1.5 * s * uy), fill=255, width=width)
    return lum * (1 - rng.uniform(0.35, 0.7) * blur121(np.asarray(m, np.float32) / 255))


def _stain(rng, s, lum):
    """Water or rust stains (dark), or efflorescence (whitish salt): soft blotches over 12-40 %
    of the image -- a threshold at a quantile, so every stain image has one."""
    n = smooth_noise(rng, s, int(rng.integers(3, 6))) + 0.35 * smooth_noise(rng, s, 11)
    blob = np.clip((n - np.quantile(n, 1 - rng.uniform(0.12, 0.4))) * rng.uniform(2, 5), 0, 1)
    sign = 1 if rng.random() < 0.3 else -1
    return lum * (1 + sign * rng.uniform(0.3, 0.5) * blob)


def _spalling(rng, s, lum):
    """A pit where the surface broke off: a jagged outline, rough exposed aggregate inside, the rim
    shadowed on the side facing the light and lit on the other (a relief, not a stain)."""
    cx, cy = rng.uniform(0.3, 0.7, 2) * s
    k = int(rng.integers(16, 32))
    angles = np.linspace(0, 2 * math.pi, k, endpoint=False) + rng.uniform(-0.1, 0.1, k)
    radii = rng.uniform(0.15, 0.32) * s * np.interp(np.arange(k), np.linspace(0, k, 5), rng.uniform(0.6, 1.3, 5))
    radii *= rng.uniform(0.8, 1.15, k)  # jagged edge on top of the lobes
    m = Image.new("L", (s, s), 0)
    ImageDraw.Draw(m).polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=255)
    pit = blur121(np.asarray(m, np.float32) / 255)
    rough = 0.5 * (smooth_noise(rng, s, max(8, s // 5)) - 0.5) + 0.25 * (rng.random((s, s), dtype=np.float32) - 0.5)
    lum = lum * (1 - pit * (rng.uniform(0.1, 0.25) - rough))
    ang = rng.uniform(0, 2 * math.pi)
    gy, gx = np.gradient(blur121(pit, 2))
    return lum * (1 + np.clip(rng.uniform(3, 5) * (gx * math.cos(ang) + gy * math.sin(ang)), -0.6, 0.5))


_DRAW = {"crack": lambda rng, s, lum: lum * (1 - crack_mask(rng, s)), "joint": _joints, "stain": _stain,
         "spalling": _spalling, "clean": lambda rng, s, lum: lum}


def render_defect(rng: np.random.Generator, name: str, size: int = 227) -> tuple[Image.Image, int]:
    """One image of class ``name`` (one of :data:`DEFECTS`); returns (RGB image, JPEG quality)."""
    lum = _DRAW[name](rng, size, background(rng, size))
    extra = [k for k, p in (("shadow", 0.3), ("scratch", 0.2)) if rng.random() < p]
    return Image.fromarray(develop(rng, distract(rng, size, lum, extra)), "RGB"), int(rng.integers(60, 96))


def _render_to(job):
    root, name, i, seed, size = job
    rng = np.random.default_rng([seed, 100 + DEFECTS.index(name), i])  # per-image seed: order-independent
    img, quality = render_defect(rng, name, size)
    img.save(Path(root) / name / f"{i + 1:05d}.jpg", "JPEG", quality=quality)


def generate_multiclass(root: Path, classes: tuple[str, ...], per_class: int, seed: int, size: int, workers: int) -> None:
    """Write ``root/<class>/00001.jpg ...``, ``per_class`` per class (the folders exist)."""
    jobs = [(str(root), name, i, seed, size) for name in classes for i in range(per_class)]
    for _ in parallel_map(_render_to, jobs, workers, chunk=32):
        pass
