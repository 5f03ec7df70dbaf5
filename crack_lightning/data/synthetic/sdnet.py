r"""Pictures of ``kind="sdnet"``: an SDNET2018-like set -- three surfaces, few cracks, cut from photos.

SDNET2018 (Dorafshan, Thomas & Maguire, 2018) holds 256 px patches of bridge decks, pavements and
walls in ``D/{CD,UD}``, ``P/{CP,UP}``, ``W/{CW,UW}`` (C: cracked, U: uncracked), about 15 %
cracked, each cut from a photo and named ``<photo>-<patch>.jpg``.  Here too: each domain has its
own surface (deck: smooth grey; pavement: coarse aggregate, darker; wall: lighter, with bug holes
and board marks), and a photo is one surface of ``tiles`` x ``tiles`` patches sharing lighting,
texture and colour, so a per-patch split leaks the photo.  Photo ids are unique across the set:

>>> import re; re.search(r"(\d+)-\d+\.jpg$", "D/CD/1007-3.jpg").group(1)
'1007'

Which patches are cracked is planned from the parameters alone (:func:`plan`), so the generator
knows every file it writes before it starts; each cracked patch gets its own crack, drawn inside it.
Many uncracked patches get a stain, joint or scratch of their own, so that a patch's variance
alone finds fewer cracks (logistic regression on mean/std: balanced accuracy ~0.84, chance 0.5).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from crack_lightning import CrackLightningError
from crack_lightning.data.synthetic.render import blur121, smooth_noise, background, crack_mask, develop, distract
from crack_lightning.utils.parallel import parallel_map

DOMAINS = ("D", "P", "W")  # bridge decks, pavements, walls
FOLDERS = tuple(f"{d}/{c}{d}" for d in DOMAINS for c in "CU")  # D/CD, D/UD, P/CP, ...
FIRST_PHOTO = 1001  # photo ids count up from here across all domains
# develop()'s (tone, warm) ranges: a domain's brightness and colour cast
LOOK = {"D": ((0.45, 0.62), (-0.02, 0.03)), "P": ((0.3, 0.48), (0.0, 0.06)), "W": ((0.62, 0.82), (0.03, 0.12))}


def check(per_domain, tiles, crack_share) -> float:
    """``crack_share`` as a float; a one-line error if a parameter is unusable."""
    if int(per_domain) < 2 or int(tiles) < 1:
        raise CrackLightningError(f"per_class={per_domain}, tiles={tiles}: kind=sdnet needs per_class >= 2 "
                                  "(images per domain, cracked and uncracked) and tiles >= 1")
    try:
        share = float(crack_share)
    except (TypeError, ValueError):
        share = math.nan
    if not 0 < share < 1:
        raise CrackLightningError(f"crack_share={crack_share!r}: give the cracked share of each domain, "
                                  "between 0 and 1 (e.g. 0.15)")
    return share


def plan(per_domain: int, seed: int, tiles: int, crack_share: float) -> list[tuple[str, int, list[tuple[int, bool]]]]:
    """The photos of a set: ``(domain, photo id, [(cell, cracked), ...])`` each.

    A domain's ``per_domain`` patches fill ``tiles * tiles`` cells per photo (its last photo
    fewer); ``round(crack_share * per_domain)`` of them (at least 1, and at least 1 uncracked)
    are cracked, drawn with photo-dependent weights so cracks cluster in some photos as in the
    real set."""
    cells = tiles * tiles
    photos, pid = [], FIRST_PHOTO
    for d, domain in enumerate(DOMAINS):
        rng = np.random.default_rng([seed, 300 + d])
        sizes = [min(cells, per_domain - k) for k in range(0, per_domain, cells)]
        owner = np.repeat(np.arange(len(sizes)), sizes)
        w = rng.exponential(size=len(sizes))[owner]
        n_cracked = min(per_domain - 1, max(1, round(crack_share * per_domain)))
        cracked = set(rng.choice(per_domain, n_cracked, replace=False, p=w / w.sum()).tolist())
        start = 0
        for n in sizes:
            photos.append((domain, pid, [(c, start + c in cracked) for c in range(n)]))
            pid, start = pid + 1, start + n
    return photos


def patch_path(domain: str, photo: int, cell: int, cracked: bool) -> str:
    """Relative path of a patch: ``D/CD/1001-1.jpg`` (patches count from 1 within a photo)."""
    return f"{domain}/{'C' if cracked else 'U'}{domain}/{photo}-{cell + 1}.jpg"


def _surface(rng, domain, s, tiles):
    lum = background(rng, s, scale=tiles)
    if domain == "D":  # deck: trowelled and smooth, half the texture contrast
        return 1 + 0.5 * (blur121(lum, 2) - 1)
    if domain == "P":  # pavement: coarse exposed aggregate, stones lighter and darker than the binder
        stones = np.clip((smooth_noise(rng, s, 28 * tiles) - 0.5) * 3, -1, 1)
        return lum * (1 + rng.uniform(0.12, 0.22) * stones + 0.12 * (rng.random((s, s), dtype=np.float32) - 0.5))
    # wall: formwork board marks (bands along one axis) and bug holes (small dark air voids)
    bands = np.interp(np.arange(s), np.linspace(0, s, 6 * tiles), rng.random(6 * tiles)).astype(np.float32) - 0.5
    lum = lum * (1 + rng.uniform(0.04, 0.1) * (bands[:, None] if rng.random() < 0.5 else bands[None, :]))
    holes = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(holes)
    for _ in range(int(rng.integers(5, 20)) * tiles * tiles):
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(1.2, 3.5)
        d.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(100, 220)))
    return lum * (1 - 0.5 / 255 * blur121(np.asarray(holes, np.float32)))


def _photo_to(job):
    """Render one photo and write its planned patches."""
    root, seed, domain, photo, cells, tiles, size = job
    rng = np.random.default_rng([seed, 200 + DOMAINS.index(domain), photo])  # own stream: any worker count
    s = tiles * size
    lum = _surface(rng, domain, s, tiles)
    lum = distract(rng, s, lum, [k for k, p in (("stain", 0.4), ("shadow", 0.4), ("joint", 0.25), ("scratch", 0.3))
                                 if rng.random() < p])
    mask = np.zeros((s, s), np.float32)
    for cell, cracked in cells:
        r, c = divmod(cell, tiles)
        patch = np.s_[r * size:(r + 1) * size, c * size:(c + 1) * size]
        # a defect of its own on many uncracked patches (fewer cracked): else variance alone finds cracks
        if rng.random() < (0.3 if cracked else 0.6):
            lum[patch] = distract(rng, size, lum[patch], [str(rng.choice(["stain", "joint", "scratch"]))])
        if cracked:  # inside its own patch: a patch's label is known before the photo is drawn
            mask[patch] = rng.uniform(0.55, 1) * crack_mask(rng, size)
    rgb = develop(rng, lum * (1 - mask), *LOOK[domain])
    quality = int(rng.integers(70, 96))  # one camera, one JPEG setting per photo
    for cell, cracked in cells:
        r, c = divmod(cell, tiles)
        Image.fromarray(rgb[r * size:(r + 1) * size, c * size:(c + 1) * size]).save(
            Path(root) / patch_path(domain, photo, cell, cracked), "JPEG", quality=quality)


def generate_sdnet(root: Path, per_domain: int, seed: int, size: int, tiles: int, crack_share: float,
                   workers: int) -> None:
    """Write the patches :func:`plan` names under ``root`` (the folders exist), one job per photo."""
    jobs = [(str(root), seed, domain, photo, cells, tiles, size)
            for domain, photo, cells in plan(per_domain, seed, tiles, crack_share)]
    for _ in parallel_map(_photo_to, jobs, workers, chunk=1):
        pass
