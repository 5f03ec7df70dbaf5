"""Write a synthetic dataset into a folder: ``Positive/`` and ``Negative/`` JPEGs, reproducibly.

Each image has its own RNG seeded with ``[seed, class, index]``, so output is independent of
order and worker count, and a seed gives byte-identical JPEGs (the pictures: :mod:`.render`; other
surfaces than concrete, ``style``: :mod:`.styles`).  Two more kinds: ``multiclass``, one folder per
defect (:mod:`.defects`), and ``sdnet``, an SDNET2018-like nested set cut from photos (:mod:`.sdnet`).
The generator writes only into a new or empty folder, or one it generated itself (its marker
``synthetic.json`` names its parameters, and so every file it wrote).
"""
from __future__ import annotations

import contextlib
import json
from collections import Counter
import time
from pathlib import Path

import numpy as np

from crack_lightning import CrackLightningError
from crack_lightning.data.synthetic import sdnet
from crack_lightning.data.synthetic.defects import DEFAULT_CLASSES, check_classes, generate_multiclass
from crack_lightning.data.synthetic.render import CLASSES, render_sample
from crack_lightning.data.synthetic.scenes import SCENES_CSV, generate_scenes
from crack_lightning.data.synthetic.styles import STYLES, check_style, image_seed, render_styled
from crack_lightning.utils.parallel import parallel_map

VERSION = 2  # bump whenever rendering changes, so cached datasets are regenerated
META = "synthetic.json"
KINDS = ("binary", "multiclass", "sdnet")


def _render_to(job):
    root, cls_idx, i, seed, size, *style = job  # concrete's jobs have no style: called as ever
    rng = np.random.default_rng(image_seed(seed, cls_idx, i, *style))  # per-image seed: order-independent
    crack = cls_idx == 0
    img, quality = render_styled(rng, crack, size, style[0]) if style else render_sample(rng, crack=crack, size=size)
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
    n, kind = int(meta["per_class"]), meta.get("kind", "binary")
    try:
        if kind == "sdnet":
            photos = sdnet.plan(n, int(meta["seed"]), int(meta["tiles"]), float(meta["crack_share"]))
            return {sdnet.patch_path(d, p, c, y) for d, p, cells in photos for c, y in cells} | {META}
        classes = CLASSES if kind == "binary" else check_classes(meta["classes"]) if kind == "multiclass" else ()
    except (KeyError, TypeError, ValueError, CrackLightningError):  # a marker we cannot read names no images
        classes = ()
    files = {f"{c}/{i:05d}.jpg" for c in classes for i in range(1, n + 1)} | {META}
    return files | {SCENES_CSV} if meta.get("layout") == "scenes" else files


def class_folders_of(kind: str = "binary", classes=None, style=None, **_generate_kwargs) -> list[str]:
    """The folders :func:`generate` with these keywords fills, one per class (kind=sdnet: the
    nested ``D/CD``, ...), relative to its root: known before it has run."""
    check_style(style)  # any style: Positive/Negative
    if kind not in KINDS:
        raise CrackLightningError(f"kind={kind!r}: choose {', '.join(KINDS)}")
    if kind == "multiclass":
        return list(check_classes(DEFAULT_CLASSES if classes is None else classes))
    return list(sdnet.FOLDERS if kind == "sdnet" else CLASSES)


def _params(per_class, seed, size, layout, tiles, kind, classes, crack_share, style="concrete") -> dict:
    """The marker's parameters, checked; kind=binary's are those of the generator before kinds
    (and styles: ``style`` only when not concrete)."""
    folders = class_folders_of(kind, classes, style)  # checks kind, classes and style
    if layout not in ("independent", "scenes"):
        raise CrackLightningError(f"layout={layout!r}: choose 'independent' or 'scenes'")
    if kind != "binary" and layout != "independent":
        raise CrackLightningError(f"layout={layout!r} is for kind=binary only; drop it for kind={kind}")
    if classes is not None and kind != "multiclass":
        raise CrackLightningError(f"classes={classes!r} is for kind=multiclass only; drop it, or set kind=multiclass")
    if crack_share is not None and kind != "sdnet":
        raise CrackLightningError(f"crack_share={crack_share!r} is for kind=sdnet only; drop it, or set kind=sdnet")
    if check_style(style) != "concrete" and (kind != "binary" or layout != "independent"):
        other = f"kind={kind}" if kind != "binary" else f"layout={layout}"
        raise CrackLightningError(f"style={style!r} is for kind=binary, layout=independent only; drop it for {other}")
    params = {"version": VERSION, "per_class": int(per_class), "seed": int(seed), "size": int(size)}
    if kind == "multiclass":
        params.update(kind=kind, classes=folders)
    elif kind == "sdnet":
        share = sdnet.check(per_class, tiles, 0.15 if crack_share is None else crack_share)
        params.update(kind=kind, tiles=int(tiles), crack_share=share)
    elif layout == "scenes":  # independent datasets keep their old synthetic.json (no regeneration)
        params.update(layout=layout, tiles=int(tiles))
    elif check_style(style) != "concrete":  # a style's own version: a changed style regenerates only its folders
        params.update(style=style, style_version=STYLES[style].version)
    return params


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
             workers: int = 1, layout: str = "independent", tiles: int = 4, kind: str = "binary",
             classes=None, crack_share: float | None = None, style: str = "concrete") -> dict:
    """Write a synthetic dataset of ``size`` px JPEGs to ``root``; return a summary dict
    (``counts``: images per folder, the parameters, ``generated``, ``seconds``).

    ``kind``:

    * ``"binary"``: ``per_class`` JPEGs in ``Positive/`` and ``Negative/``, ``00001.jpg`` on.
      ``layout="independent"`` renders every image on its own; ``"scenes"`` cuts them from
      shared ``tiles`` x ``tiles`` wall scenes like the real dataset (:mod:`.scenes`).
      ``style`` (layout independent only): the surface, ``concrete`` (default), ``asphalt``,
      ``painted`` or ``low_light`` (:mod:`.styles`); the folders and names stay the same.
    * ``"multiclass"``: ``per_class`` JPEGs in one folder per name of ``classes`` (at least 2 of
      ``crack``, ``joint``, ``stain``, ``spalling``, ``clean``; default the first three and
      ``clean``), named as in binary (:mod:`.defects`).
    * ``"sdnet"``: SDNET2018's layout ``D/{CD,UD}``, ``P/{CP,UP}``, ``W/{CW,UW}``, where
      ``per_class`` is the number of images *per domain*, ``crack_share`` (default 0.15) of them
      cracked; patches are cut from photos of ``tiles`` x ``tiles`` and named
      ``<photo id>-<patch>.jpg``, ids unique across the set (:mod:`.sdnet`).

    Skips all work if ``root`` holds a complete dataset with the same parameters
    (``synthetic.json``) unless ``overwrite``.  Output is identical for any ``workers``.

    It writes only into a new or empty folder, or one it generated before (its marker,
    ``synthetic.json``, is written first), and deletes only files it wrote itself: a folder
    holding any other file raises :class:`NotGeneratedHere` and is left untouched."""
    root = Path(root)
    params = _params(per_class, seed, size, layout, tiles, kind, classes, crack_share, style)
    if root.exists() and not root.is_dir():
        raise NotGeneratedHere(f"{root} is a file; the synthetic generator writes into a new or empty folder.")
    folders = class_folders_of(kind, classes)
    images = Counter(rel.rsplit("/", 1)[0] for rel in _written_by(params) if rel.endswith(".jpg"))
    summary = {"root": str(root), "counts": {f: images[f] for f in folders}, **params}
    if kind == "binary":
        summary["style"] = check_style(style)
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
    ours = _written_by(old) if old else set()
    for rel in sorted(ours):  # our own files of a run with other parameters
        (root / rel).unlink(missing_ok=True)
    # and the folders they leave empty: another kind's empty class folder would read as a class
    for d in sorted({q for rel in ours for q in Path(rel).parents} - {Path(".")}, key=lambda q: -len(q.parts)):
        with contextlib.suppress(OSError):  # not empty, or not there
            (root / d).rmdir()
    for c in folders:
        (root / c).mkdir(parents=True, exist_ok=True)
    # the marker first: an interrupted run leaves a folder that is still recognisably ours
    (root / META).write_text(json.dumps({**params, "complete": False}, indent=2) + "\n")
    if kind == "sdnet":
        sdnet.generate_sdnet(root, params["per_class"], params["seed"], params["size"], params["tiles"],
                             params["crack_share"], workers)
    elif kind == "multiclass":
        generate_multiclass(root, tuple(params["classes"]), params["per_class"], params["seed"], params["size"], workers)
    elif layout == "scenes":
        generate_scenes(root, int(per_class), int(seed), int(size), int(tiles), workers)
    else:
        styled = (params["style"],) if "style" in params else ()
        jobs = [(str(root), k, i, int(seed), int(size), *styled) for k in range(len(CLASSES)) for i in range(per_class)]
        for _ in parallel_map(_render_to, jobs, workers, chunk=32):
            pass
    (root / META).write_text(json.dumps({**params, "complete": True}, indent=2) + "\n")
    return {**summary, "generated": True, "seconds": round(time.perf_counter() - t0, 3)}
