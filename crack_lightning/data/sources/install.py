"""`make data`: download, verify, extract and lay out "Concrete Crack Images for Classification".

    python -m crack_lightning.cli.data                               # -> data/concrete_crack
    python -m crack_lightning.cli.data root=/data/concrete_crack     # then train.py data.root=...
    python -m crack_lightning.cli.data source.url=<mirror URL>       # same size and SHA-256

Steps: fetch the archive into ``download_dir`` (resumable, size and SHA-256 checked) ->
extract it into a staging folder next to ``root`` (all-or-nothing) -> find the folder holding
the class folders (``source.classes``, possibly nested, never in ``__MACOSX/``) -> mark it as
laid out by us (:data:`LAYOUT_MARKER`) and move it to ``root`` -> compare the image counts with
``source.expect`` (a warning, not an error) -> write the dataset card -> summary. Folders and
counts follow training's rule (:mod:`crack_lightning.data.imagefolder`).

A ``root`` that already holds the class folders with images is left alone (rerunning is a
no-op; only a folder this command laid out gets a missing card); nothing here ever deletes
a dataset or a file the user had. Config: ``conf/get_data.yaml`` and ``conf/source/``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from crack_lightning import CrackLightningError
from crack_lightning.data.sources.archive import extract
from crack_lightning.data.sources.download import fetch, sha256_setting
from crack_lightning.data.imagefolder import count_images, find_imagefolder
from crack_lightning.utils.files import remove_stale_folders, sha256_file, temporary_folder, write_atomic

log = logging.getLogger(__name__)

# Written into the dataset folder by the layout step, before it moves to root: "make data laid
# this folder out from this archive". Only such a folder is ever written into (a missing card).
LAYOUT_MARKER = ".crack_lightning_source.json"


def get_data(cfg: DictConfig) -> Path:
    """Make sure ``cfg.root`` holds the dataset; return ``root``."""
    root = Path(cfg.root).expanduser().absolute()
    if root.is_symlink():  # data on another disk: fill the folder the link points to
        root = Path(os.path.realpath(root))
    classes = [str(c) for c in cfg.source.classes]
    expect = dict(cfg.source.expect) if cfg.source.get("expect") else None

    staging = f".{root.name}.unpacked-"  # next to root: same disk, atomic move
    if root.parent.is_dir():  # what a killed run left, if it was ours
        remove_stale_folders(root.parent, staging)

    counts = count_images(root, classes)
    if counts and all(counts.values()):
        if cfg.force:
            raise CrackLightningError(
                f"force=true: {root} already holds the dataset ({_fmt(counts)}) and this command "
                f"never deletes data; to rebuild it, move or delete {root} yourself and rerun, "
                f"or lay out a fresh copy elsewhere with root=<folder>")
        _existing_dataset(root, counts, cfg, expect)
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        what = ", ".join(sorted(p.name for p in root.iterdir())[:5]) if root.is_dir() else "a file"
        raise CrackLightningError(
            f"root={root} exists but does not hold {' and '.join(f'{c}/' for c in classes)} with "
            f"images (it holds: {what}); nothing was changed: move it away (or empty it) and "
            f"rerun, or choose another folder with root=<folder>")

    src = cfg.source
    archive = Path(cfg.download_dir).expanduser() / src.filename
    had_archive = archive.exists()  # then it may be the user's: keep_archive=false keeps it
    archive = fetch(src.url, archive, src.size, src.sha256, progress=cfg.progress,
                    timeout=cfg.timeout_s, retries=cfg.retries)

    with temporary_folder(root.parent, staging) as work:
        unpacked = extract(archive, work / "unpacked")
        found = find_imagefolder(unpacked, classes)
        if found is None:
            raise CrackLightningError(
                f"{archive} holds no folder with {' and '.join(f'{c}/' for c in classes)} "
                f"(top level: {', '.join(sorted(p.name for p in unpacked.iterdir())[:8]) or 'nothing'}): "
                f"is source.url the right archive? (source.classes names the class folders)")
        layout = {"source": src.get("name"), "archive": src.filename,
                  "sha256": sha256_setting(src.sha256) or sha256_file(archive)}
        write_atomic(found / LAYOUT_MARKER, json.dumps(layout, indent=2) + "\n")  # root never appears without it
        os.replace(found, root)  # root is absent or an empty folder

    counts = count_images(root, classes)
    _check_counts(counts, expect)
    if not cfg.keep_archive and had_archive:
        log.info("Kept %s (keep_archive=false deletes only an archive this run downloaded)", archive)
    elif not cfg.keep_archive:
        archive.unlink()
        log.info("Deleted %s (keep_archive=false)", archive)

    card = _write_card(root, src) if cfg.card else None

    log.info("Dataset ready at %s: %s", root, _fmt(counts))
    if card:
        log.info("Dataset card: %s", card)
    log.info("Train on it: python train.py data.root=%s", root)
    if src.get("citation"):
        log.info("License %s; please cite: %s", src.get("license", "see the source"), src.citation)
    return root


def _existing_dataset(root: Path, counts: dict[str, int], cfg: DictConfig, expect: dict | None) -> None:
    """Rerun on a dataset already at root: never write into a folder make data did not lay out."""
    layout = laid_out_by(root)
    if layout is None:
        log.info("%s holds %s and was not laid out by make data: left as it is (no card written); "
                 "`make validate ROOT=%s` checks it", root, _fmt(counts), root)
        return
    log.info("%s already holds %s: nothing to do (to rebuild it, move it away and rerun)",
             root, _fmt(counts))
    _check_counts(counts, expect)
    if not cfg.card or _card_exists(root):
        return
    src = cfg.source
    sha256 = sha256_setting(src.sha256)
    if layout.get("source") != src.get("name") or (sha256 and layout.get("sha256") != sha256):
        log.info("%s was laid out from %s (SHA-256 %s), not from source %s: no card written for it",
                 root, layout.get("archive"), layout.get("sha256"), src.get("name"))
        return
    _write_card(root, src)  # the card failed or was deleted after our layout


def laid_out_by(root: Path) -> dict | None:
    """What :data:`LAYOUT_MARKER` in ``root`` records (source, archive, sha256), or None when
    this command did not lay ``root`` out."""
    marker = root / LAYOUT_MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        layout = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return layout if isinstance(layout, dict) else None


def _write_card(root: Path, src: DictConfig) -> Path:
    """The dataset card (crack_lightning.data.quality.card) with the source's licence and citation."""
    from crack_lightning.data.quality.card import write_card  # noqa: PLC0415 - decodes every image

    log.info("Writing the dataset card: every image is decoded and checked (about a minute "
             "for 40,000 images on 2 cores)")
    licence = None
    if src.get("citation"):
        doi = f", doi:{src.doi}" if src.get("doi") else ""
        licence = (f"Source: {src.get('page') or src.url}{doi}. "
                   f"Licence: {src.get('license', 'see the source')}.\n\nCite: {src.citation}")
    return Path(write_card(root, licence=licence))


def _card_exists(root: Path) -> bool:
    from crack_lightning.data.quality.card import CARD_MD  # noqa: PLC0415

    return (root / CARD_MD).is_file()


def _check_counts(counts: dict[str, int], expect: dict | None) -> None:
    if not expect:
        return
    off = {c: (counts.get(c, 0), n) for c, n in expect.items() if counts.get(c, 0) != n}
    if off:
        log.warning("Image counts differ from source.expect: %s; training works on what is there, "
                    "but results will not compare with the published ones",
                    ", ".join(f"{c}: {have:,} (expected {n:,})" for c, (have, n) in off.items()))


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{c}/ {n:,} images" for c, n in counts.items())
