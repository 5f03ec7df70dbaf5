"""Screen the dataset's files before training: which images can be used, and why the others cannot.

A DataLoader worker that meets a truncated JPEG kills the run mid-epoch, maybe
hours in.  So before any split is made, every image file is checked once, with
the validator's per-file check
(:func:`~crack_lightning.data.quality.fingerprints.fingerprint_file`: full decode with
``LOAD_TRUNCATED_IMAGES`` off, so zero-byte, truncated, unreadable files and
text files named ``.jpg`` are caught), after two header checks that need no decode:

* **too large**: a header claiming more than ``max_pixels`` (a decompression bomb,
  e.g. a 100000x100000 PNG of a few hundred bytes) is refused before PIL
  allocates anything;
* **too small**: a side under ``min_side`` pixels (a 1x1 placeholder or tracking
  pixel) is no crack patch.

Real images in other modes (alpha, grayscale, 16-bit, CMYK) pass: they are
converted by :func:`~crack_lightning.data.dataset.to_rgb` when loaded.  The
verdicts are cached in ``cache_dir`` keyed by the file list (names, sizes,
mtimes; :func:`~crack_lightning.utils.files.files_key`), like the decoded images and
the groups: 40,000 files take about half a minute to check on 2 cores, once.
The grouped split reads the same decode: :func:`screen` can keep every checked
file's :class:`~crack_lightning.data.quality.fingerprints.Fingerprint` (with the
border profiles as its ``extra``) for :func:`~crack_lightning.data.quality.grouping.group_files`.

Only files that pass reach the split, the decoded cache and the loaders.  What
happens to the others is ``data.screening.on_bad_file`` (:class:`BadFilePolicy`):
``skip`` (a warning and ``skipped_files.txt`` in the run folder, path and reason
per line) or ``error`` (stop before training with the list).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.data.settings import BadFilePolicy, ScreeningSettings
from crack_lightning.data.imagefolder import Sample, check_classes
from crack_lightning.data.labelled import Scanned
from crack_lightning.data.quality.fingerprints import Fingerprint, fingerprint_files
from crack_lightning.utils.files import files_key, write_atomic

log = logging.getLogger(__name__)

VERSION = 1  # bump when a verdict would change for the same files and settings
SHOWN = 20  # bad files listed in an error message; skipped_files.txt has them all


@dataclass
class Screening:
    """The scan and check of one dataset root."""

    root: Path
    good: list[Sample]
    bad: dict[Path, str] = field(default_factory=dict)  # image files that failed: on_bad_file applies
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # never images: hidden, Thumbs.db, ...
    # the check's decode of every file it looked at, when screen() was asked for an extra
    # (empty when the verdicts came from the cache): the grouped split reads it, then drops it
    fingerprints: dict[Path, Fingerprint] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """``path<TAB>reason`` per skipped file, bad first, paths relative to the root."""
        def rel(p: Path) -> str:
            return p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p)

        return ([f"{rel(p)}\t{why}" for p, why in sorted(self.bad.items())] +
                [f"{rel(p)}\t(ignored) {why}" for p, why in sorted(self.ignored)])


def header_problem(path: Path, min_side: int, max_pixels: int) -> str | None:
    """Too large or too small by the header alone (nothing decoded), else ``None``;
    files PIL cannot even open are left to the full check, which says why."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # read any claimed size; our own limit is applied below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: judged below
            with Image.open(path) as img:
                width, height = img.size
    except Exception:  # noqa: BLE001 -- classified by fingerprint_file
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if width * height > max_pixels:
        return (f"too large: the header claims {width}x{height} pixels, over data.screening.max_pixels="
                f"{max_pixels} (a decompression bomb?); not decoded")
    if min(width, height) < min_side:
        return f"too small: {width}x{height} pixels, a side under data.screening.min_side={min_side}"
    return None


def check_files(paths: list[Path], min_side: int, max_pixels: int, workers: int | None = None,
                extra: Callable | None = None) -> tuple[dict[Path, str], dict[Path, Fingerprint]]:
    """The reason each unusable file of ``paths`` cannot be used (good files are absent),
    and the fingerprints of the files decoded for it (``extra``: see ``fingerprint_files``)."""
    bad = {}
    for p in paths:
        if (why := header_problem(p, min_side, max_pixels)) is not None:
            bad[p] = why
    rest = [p for p in paths if p not in bad]
    prints = {}
    for fp in fingerprint_files(rest, workers=workers, extra=extra):
        prints[fp.path] = fp
        if not fp.ok:
            bad[fp.path] = f"{fp.kind}: {fp.error}"
    return bad, prints


def screen(scanned: Scanned, cache_dir: Path | None = None, settings: ScreeningSettings | None = None,
           workers: int | None = None, extra: Callable | None = None) -> Screening:
    """Check every image file of a scanned set (:class:`~crack_lightning.data.labelled.LabelledSet`),
    cached in ``cache_dir``.

    When the files are decoded (no cached verdicts), ``extra`` runs on each image in the
    same pass and the fingerprints are kept in :attr:`Screening.fingerprints`."""
    settings = settings or ScreeningSettings()
    min_side, max_pixels = settings.min_side, settings.max_pixels
    root, samples, broken, ignored = scanned.root, scanned.samples, scanned.broken, scanned.ignored
    paths = [s.path for s in samples]
    cache = None
    if cache_dir is not None:
        key = files_key(paths, min_side=int(min_side), max_pixels=int(max_pixels), version=VERSION)
        cache = Path(cache_dir) / f"screening-{key}.json"
    prints = {}
    if cache is not None and cache.is_file():
        log.info("Reusing the image check of %d files from %s", len(paths), cache)
        bad = {Path(p): why for p, why in json.loads(cache.read_text())["bad"].items()}
    else:
        log.info("Checking %d image files (decoding each once) ...", len(paths))
        bad, prints = check_files(paths, min_side, max_pixels, workers, extra)
        if cache is not None:
            write_atomic(cache, json.dumps({"root": str(root), "files": len(paths),
                                            "bad": {str(p): why for p, why in sorted(bad.items())}}, indent=1))
    bad.update(broken)
    kept = prints if extra is not None else {}  # only a caller that asked for extras reads them
    return Screening(root, [s for s in samples if s.path not in bad], bad, ignored, kept)


def apply_bad_file_policy(screening: Screening, class_names: list[str], policy: BadFilePolicy,
                          report: Path | None, announce: bool = True) -> list[Sample]:
    """The usable samples; ``report`` (``skipped_files.txt``) lists the rest when ``announce``.

    ``error`` with bad files stops with their list; ``skip`` warns once.  A class
    left without usable images stops either way."""
    if announce and report is not None and (screening.bad or screening.ignored):
        write_atomic(report, f"# {len(screening.bad)} bad and {len(screening.ignored)} ignored files under "
                             f"{screening.root}, not used for training (path<TAB>reason)\n"
                             + "".join(line + "\n" for line in screening.lines()))
    where = f" (all in {report})" if report is not None else ""
    if screening.bad and policy == BadFilePolicy.ERROR:
        raise CrackLightningError(
            f"{len(screening.bad)} bad image file(s) under data.root={screening.root}{where}; data.screening."
            f"on_bad_file=error stops here. Fix or remove them, or set data.screening.on_bad_file=skip to train "
            f"without them:\n" + _listing(screening))
    if screening.bad and announce:
        log.warning("Skipping %d bad image file(s) under %s%s (data.screening.on_bad_file=skip):\n%s",
                    len(screening.bad), screening.root, where, _listing(screening))
    check_classes(screening.root, class_names, screening.good, skipped=len(screening.bad))
    return screening.good


def _listing(screening: Screening) -> str:
    lines = screening.lines()[:min(SHOWN, len(screening.bad))]
    more = len(screening.bad) - len(lines)
    return "\n".join(f"  {line.replace(chr(9), ': ', 1)}" for line in lines) + (f"\n  ... and {more} more" if more else "")


def drop_unusable(splits: dict[str, list[Sample]], screening: Screening, policy: BadFilePolicy, split_file: Path,
                  announce: bool = True) -> dict[str, list[Sample]]:
    """A saved split without the files that are not usable now (or stop, with ``error``)."""
    good = {s.path for s in screening.good}
    dropped = [s.path for part in splits.values() for s in part if s.path not in good]
    if not dropped:
        return splits
    listing = "\n".join(f"  {p}: {screening.bad.get(p, 'no longer among the usable images')}" for p in dropped[:SHOWN])
    if policy == BadFilePolicy.ERROR:
        raise CrackLightningError(
            f"{split_file} lists {len(dropped)} file(s) that are not usable now; data.screening.on_bad_file=error "
            f"stops here. Fix them, delete {split_file.name} to make a new split, or set "
            f"data.screening.on_bad_file=skip:\n{listing}")
    if announce:
        log.warning("%s lists %d file(s) that are not usable now; left out (data.screening.on_bad_file=skip):\n%s",
                    split_file, len(dropped), listing)
    kept = {name: [s for s in part if s.path in good] for name, part in splits.items()}
    for name, part in kept.items():
        if not part:
            raise CrackLightningError(f"{split_file}: no usable image left in the {name} split. "
                                      f"Delete {split_file.name} to make a new split.")
    return kept
