"""Write a synthetic dataset into a folder: ``Positive/`` and ``Negative/`` JPEGs, reproducibly.

Each image has its own RNG seeded with ``[seed, class, index]``, so output is independent of
order and worker count, and a seed gives byte-identical JPEGs (the pictures: :mod:`.render`).
The generator writes only into a new or empty folder, or one it generated itself (its marker
``synthetic.json`` names its parameters, and so every file it wrote).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from crack_lightning import CrackLightningError
from crack_lightning.data.synthetic.render import CLASSES, render_sample
from crack_lightning.data.synthetic.scenes import SCENES_CSV, generate_scenes
from crack_lightning.utils.parallel import parallel_map

VERSION = 2  # bump whenever rendering changes, so cached datasets are regenerated
META = "synthetic.json"


def _render_to(job):
    root, cls_idx, i, seed, size = job
    rng = np.random.default_rng([seed, cls_idx, i])  # per-image seed: order-independent
    img, quality = render_sample(rng, crack=(cls_idx == 0), size=size)
    img.save(Path(root) / CLASSES[cls_idx] / f"{i + 1:05d}.jpg", "JPEG", quality=quality)


class NotGeneratedHere(CrackLightningError):
    """The output folder holds files the generator did not write: it is someone's data."""


def _read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "per_class" in meta else None


def _written_by(meta: dict) -> set[str]:
    """The files (relative paths) a generation with ``meta``'s parameters writes, marker included:
    the generator's names are fixed by its parameters, so they are known before it starts."""
    n = int(meta["per_class"])
    files = {f"{c}/{i:05d}.jpg" for c in CLASSES for i in range(1, n + 1)} | {META}
    return files | {SCENES_CSV} if meta.get("layout") == "scenes" else files


def _foreign_files(root: Path, meta: dict | None) -> list[str]:
    """Files under ``root`` the generator did not write (all of them when it has no marker)."""
    if not root.is_dir():
        return []
    ours = _written_by(meta) if meta else set()
    return sorted(rel for p in root.rglob("*") if (p.is_file() or p.is_symlink())
                  and (rel := p.relative_to(root).as_posix()) not in ours)


def _is_complete(root: Path, meta: dict | None, params: dict) -> bool:
    # markers written before "complete" existed were written last, so they mean complete
    if meta is None or {k: v for k, v in meta.items() if k != "complete"} != params or not meta.get("complete", True):
        return False
    return all((root / rel).is_file() for rel in _written_by(params))


def generate(root, per_class: int = 1000, seed: int = 0, size: int = 227, overwrite: bool = False,
             workers: int = 1, layout: str = "independent", tiles: int = 4) -> dict:
    """Write ``per_class`` JPEGs to ``root/{Positive,Negative}``; return a summary dict.

    ``layout="independent"`` renders every image on its own; ``"scenes"`` cuts them
    from shared ``tiles`` x ``tiles`` wall scenes like the real dataset (see
    :mod:`crack_lightning.data.synthetic.scenes`).  Skips all work if ``root`` holds a complete
    dataset with the same parameters (``synthetic.json``) unless ``overwrite``.
    Output is identical for any ``workers``.

    It writes only into a new or empty folder, or one it generated before (its marker,
    ``synthetic.json``, is written first), and deletes only files it wrote itself: a folder
    holding any other file raises :class:`NotGeneratedHere` and is left untouched."""
    root = Path(root)
    if layout not in ("independent", "scenes"):
        raise CrackLightningError(f"layout={layout!r}: choose 'independent' or 'scenes'")
    if root.exists() and not root.is_dir():
        raise NotGeneratedHere(f"{root} is a file; the synthetic generator writes into a new or empty folder.")
    params = {"version": VERSION, "per_class": int(per_class), "seed": int(seed), "size": int(size)}
    if layout == "scenes":  # independent datasets keep their old synthetic.json (no regeneration)
        params.update(layout=layout, tiles=int(tiles))
    summary = {"root": str(root), "counts": {c: int(per_class) for c in CLASSES}, **params}
    old = _read_meta(root)
    foreign = _foreign_files(root, old)
    if foreign:
        raise NotGeneratedHere(
            f"{root} holds {len(foreign)} file(s) the synthetic generator did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); it only writes into a new or empty folder, or one it "
            f"generated, and nothing there was changed. Choose another output folder.")
    if not overwrite and _is_complete(root, old, params):
        return {**summary, "generated": False, "seconds": 0.0}
    t0 = time.perf_counter()
    for rel in sorted(_written_by(old)) if old else []:  # our own files of a run with other parameters
        (root / rel).unlink(missing_ok=True)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    # the marker first: an interrupted run leaves a folder that is still recognisably ours
    (root / META).write_text(json.dumps({**params, "complete": False}, indent=2) + "\n")
    if layout == "scenes":
        generate_scenes(root, int(per_class), int(seed), int(size), int(tiles), workers)
    else:
        jobs = [(str(root), k, i, int(seed), int(size)) for k in range(len(CLASSES)) for i in range(per_class)]
        for _ in parallel_map(_render_to, jobs, workers, chunk=32):
            pass
    (root / META).write_text(json.dumps({**params, "complete": True}, indent=2) + "\n")
    return {**summary, "generated": True, "seconds": round(time.perf_counter() - t0, 3)}
