"""Validate an ImageFolder dataset: counts, sizes, broken files, duplicates, split leaks.

``python -m crack_lightning.cli.validate ROOT [--splits splits.csv] [--json report.json]
[--positive-class FOLDER]``

Which files are images of which class is training's rule, not a second one:
:func:`crack_lightning.data.imagefolder.scan_files` over
:func:`~crack_lightning.data.imagefolder.class_folders` (hidden and system folders such as
``__MACOSX`` are no class; symbolic links are followed, to files outside ROOT too).
Files directly in ROOT, such as ``synthetic.json`` or the dataset card, are listed but
not checked; ``splits.csv`` is read by :func:`crack_lightning.data.splits.read_split_rows`.  The report (terminal table + JSON, paths relative to ROOT) holds:

* class folders training would refuse (not exactly two, or no recognisable crack class
  without ``--positive-class``), with training's own one-line reason;
* images per class, image sizes, modes and formats;
* problem files by kind: ``empty`` (zero bytes), ``not_image`` (an image extension
  but not an image, e.g. a text file named ``.jpg``), ``truncated`` (PIL stops early,
  or a JPEG has no end-of-image marker), ``unreadable`` (any other decode error),
  ``broken`` (a dangling or looping link, an unreadable folder);
* non-image files: files in class folders without an image extension (what
  training silently skips); what training ignores on purpose (hidden and system
  files, a second path to one file) is listed apart, not as a problem;
* exact duplicates (same SHA-256), within one class or across classes;
* near-duplicates: perceptual hashes within ``--near-distance`` bits *and* a pixel
  check (band-passed grayscale correlation over shifts up to 2 px, see
  :func:`crack_lightning.data.quality.fingerprints.verify_pairs`), since hashes of plain
  concrete collide by chance; within one class or across classes;
* with ``--splits``: exact and near duplicates whose members sit in different
  splits (a leak between train and test), files listed but missing, image files
  not listed, files listed twice, and labels that disagree with the class folder.

It writes nothing but the ``--json`` report (checked before the scan; never inside ROOT).
Exit status: 0 clean, 1 problems found, 2 a user error (one line on stderr).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from crack_lightning import CrackLightningError
from crack_lightning.data.imagefolder import (
    IMG_EXTENSIONS, NOT_AN_IMAGE_NAME, class_folders, outside_classes, resolve_class_names, scan_files,
)
from crack_lightning.data.splits import SplitRow, read_split_rows
from crack_lightning.data.quality.fingerprints import KINDS, MAX_SHIFT, MIN_CORRELATION, fingerprint_files, near_pairs, verify_pairs
from crack_lightning.utils.parallel import resolve_workers

REPORT_VERSION = 1
# pHash bits apart up to which a pair is checked at pixel level: re-encoded, shifted or resized
# copies stay within it, different images rarely do (tests/test_validate.py plants both kinds).
NEAR_DISTANCE = 10
PROBLEM_KINDS = tuple(k for k in KINDS if k != "ok")

# Summary headings in display order: (key, title). A report is clean when all are 0.
HEADINGS = (
    ("class_folders", "class folders training would refuse"),
    ("empty", "zero-byte files"),
    ("not_image", "not images (image extension, other content)"),
    ("truncated", "truncated images"),
    ("unreadable", "unreadable images"),
    ("broken", "broken links and unreadable folders"),
    ("non_image_files", "non-image files (by extension)"),
    ("empty_classes", "class folders without images"),
    ("exact_within_class", "exact duplicates within a class (groups)"),
    ("exact_across_classes", "exact duplicates across classes (groups)"),
    ("near_within_class", "near-duplicates within a class (pairs)"),
    ("near_across_classes", "near-duplicates across classes (pairs)"),
    ("split_exact_leaks", "splits: exact duplicates in different splits (groups)"),
    ("split_near_leaks", "splits: near-duplicates in different splits (pairs)"),
    ("split_missing", "splits: listed but missing"),
    ("split_unlisted", "splits: image files not listed"),
    ("split_listed_twice", "splits: listed more than once"),
    ("split_label_mismatch", "splits: label differs from class folder"),
)


# --- scanning ---------------------------------------------------------------------------


@dataclass
class Scan:
    classes: list[str]               # class folders: training's [negative, positive] when it accepts them
    images: list[tuple[str, Path]]   # (path relative to ROOT, posix; path to read) of each image file
    non_image: list[str]             # files without an image extension in class folders
    broken: list[dict]               # {"path", "reason"}: dangling links, unreadable folders
    ignored: list[dict]              # {"path", "reason"}: what training leaves out on purpose
    root_files: list[str]            # files directly in ROOT: listed, not checked
    refusal: str | None              # training's reason for refusing the class folders


def scan(root: Path, positive_class: str | None = None) -> Scan:
    """Take the class folders and image files of ``root`` as training does (imagefolder.py)."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "no such folder"
        raise CrackLightningError(
            f"{root}: {what}. Pass the ImageFolder root that holds one sub-folder per class "
            f"(e.g. Positive/ and Negative/)."
        )
    classes = class_folders(root)
    if not classes:
        raise CrackLightningError(
            f"{root}: no class sub-folders. Pass the ImageFolder root that holds one sub-folder "
            f"per class (e.g. Positive/ and Negative/), not a class folder itself."
        )
    if positive_class is not None and positive_class not in classes:
        raise CrackLightningError(
            f"--positive-class {positive_class}: not a class folder of {root}; choose one of {classes}.")
    refusal = None
    try:
        classes = resolve_class_names(root, positive_class)  # labelled as training labels them
    except CrackLightningError as err:  # a finding: the rest is still scanned and reported
        refusal = str(err)
    samples, broken, ignored = scan_files(root, classes)
    base = root.resolve()  # scan_files' paths lie under the resolved root

    def rel(path: Path) -> str:
        path = Path(path)
        return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)

    root_files, other_folders = outside_classes(root, classes)
    return Scan(
        classes=classes,
        images=[(rel(s.path), s.path) for s in samples],
        non_image=sorted(rel(p) for p, why in ignored if why.startswith(NOT_AN_IMAGE_NAME)),
        broken=sorted(({"path": rel(p), "reason": why} for p, why in broken), key=lambda b: b["path"]),
        ignored=sorted([{"path": rel(p), "reason": why} for p, why in ignored if not why.startswith(NOT_AN_IMAGE_NAME)]
                       + [{"path": name, "reason": "hidden or system folder: not a class"}
                          for name in other_folders], key=lambda i: i["path"]),
        root_files=root_files,
        refusal=refusal,
    )


# --- splits.csv -------------------------------------------------------------------------


def split_rows(csv_path: Path, root: Path) -> list[SplitRow]:
    """``--splits``' rows, read as training reads them; a refusal names the option."""
    try:
        return read_split_rows(csv_path, root)
    except CrackLightningError as err:
        raise CrackLightningError(f"--splits {err}") from None


def _split_report(rows: list[SplitRow], csv_path: Path, image_paths: list[str], groups: list[list[str]],
                  near: list[dict]) -> dict:
    present = set(image_paths)
    split_of: dict[str, str] = {}
    listed_twice: dict[str, list[str]] = defaultdict(list)
    missing, mismatch = [], []
    for r in rows:
        p = r.path
        if p in split_of or p in listed_twice:
            listed_twice[p].append(r.split)
            continue
        split_of[p] = r.split
        if p not in present:
            missing.append({"path": p, "line": r.line, "split": r.split})
        folder = PurePosixPath(p).parts[0] if p else ""
        if r.label is not None and r.label != folder:
            mismatch.append({"path": p, "line": r.line, "label": r.label, "folder": folder})
    twice = [{"path": p, "splits": [split_of[p], *more]} for p, more in sorted(listed_twice.items())]
    unlisted = [p for p in image_paths if p not in split_of]
    exact_leaks = []
    for paths in groups:
        splits = [split_of.get(p) for p in paths]
        if len({s for s in splits if s is not None}) > 1:
            exact_leaks.append({"paths": paths, "splits": splits})
    near_leaks = []
    for pair in near:
        sa, sb = split_of.get(pair["a"]), split_of.get(pair["b"])
        if sa is not None and sb is not None and sa != sb:
            near_leaks.append({**pair, "split_a": sa, "split_b": sb})
    return {
        "csv": str(csv_path),
        "rows": len(rows),
        "counts": dict(sorted(Counter(split_of.values()).items())),
        "exact_duplicates_across_splits": exact_leaks,
        "near_duplicates_across_splits": near_leaks,
        "missing": missing,
        "unlisted": unlisted,
        "listed_twice": twice,
        "label_mismatch": mismatch,
    }


# --- the validator ----------------------------------------------------------------------


def _class_of(rel: str) -> str:
    return rel.split("/", 1)[0]


def validate(root, splits_csv=None, workers: int | None = None, near_distance: int = NEAR_DISTANCE,
             progress: bool = False, min_correlation: float = MIN_CORRELATION,
             positive_class: str | None = None) -> dict:
    """Scan the ImageFolder at ``root`` and return the report (JSON-ready dict).

    ``report["summary"]["clean"]`` is True when no heading of :data:`HEADINGS` has
    a finding. Raises :class:`CrackLightningError` for a missing root or splits file.
    ``positive_class``: the crack folder, as ``data.positive_class`` tells training.
    """
    t0 = time.perf_counter()
    root = Path(root)
    rows = split_rows(Path(splits_csv), root) if splits_csv is not None else None
    found = scan(root, positive_class)
    classes = found.classes
    workers = resolve_workers(workers)
    t_scan = time.perf_counter()

    rel_paths = [rel for rel, _ in found.images]
    fps = fingerprint_files([path for _, path in found.images], workers=workers, progress=progress)
    t_fp = time.perf_counter()

    per_class = {c: {"images": 0, "bytes": 0, "problem_files": 0, "non_image_files": 0} for c in classes}
    problems: dict[str, list[dict]] = {k: [] for k in PROBLEM_KINDS}
    sizes, modes, formats = Counter(), Counter(), Counter()
    ok_idx = []
    for k, (rel, fp) in enumerate(zip(rel_paths, fps)):
        cls = per_class[_class_of(rel)]
        cls["bytes"] += fp.nbytes
        if fp.kind == "ok":
            ok_idx.append(k)
            cls["images"] += 1
            sizes[f"{fp.size[0]}x{fp.size[1]}"] += 1
            modes[fp.mode] += 1
            formats[fp.format] += 1
        else:
            cls["problem_files"] += 1
            problems[fp.kind].append({"path": rel, "error": fp.error, "nbytes": fp.nbytes})
    for b in found.broken:
        if _class_of(b["path"]) in per_class:
            per_class[_class_of(b["path"])]["problem_files"] += 1
    non_image = []
    for rel in found.non_image:
        try:
            nbytes = (root / rel).stat().st_size
        except OSError:
            nbytes = 0
        per_class[_class_of(rel)]["non_image_files"] += 1
        per_class[_class_of(rel)]["bytes"] += nbytes
        non_image.append({"path": rel, "nbytes": nbytes})

    # Exact duplicates: readable images with the same bytes.
    by_sha: dict[str, list[int]] = defaultdict(list)
    for k in ok_idx:
        by_sha[fps[k].sha256].append(k)
    exact = {"within_class": [], "across_classes": []}
    groups = []
    for sha, members in sorted(by_sha.items(), key=lambda kv: rel_paths[kv[1][0]]):
        if len(members) < 2:
            continue
        paths = [rel_paths[k] for k in members]
        cls = sorted({_class_of(p) for p in paths})
        exact["across_classes" if len(cls) > 1 else "within_class"].append(
            {"sha256": sha, "paths": paths, "classes": cls})
        groups.append(paths)

    # Near-duplicates: one representative per distinct content, hash candidates, then pixels.
    reps = [members[0] for members in by_sha.values()]
    reps.sort()
    hashes = np.array([fps[k].phash for k in reps], dtype=np.uint64)
    cand = near_pairs(hashes, near_distance)
    checks = verify_pairs([fps[reps[i]].path for i in range(len(reps))] if len(cand) else [],
                          cand, workers=workers, progress=progress)
    near = {"within_class": [], "across_classes": []}
    near_flat = []
    for (i, j), (corr, dx, dy) in zip(cand, checks):
        if corr < min_correlation:
            continue
        a_rep, b_rep = reps[i], reps[j]
        dist = int(np.bitwise_count(hashes[i] ^ hashes[j]))
        for a in by_sha[fps[a_rep].sha256]:
            for b in by_sha[fps[b_rep].sha256]:
                pa, pb = sorted((rel_paths[a], rel_paths[b]))
                pair = {"a": pa, "b": pb, "phash_distance": dist, "correlation": round(float(corr), 4),
                        "shift": [int(dx), int(dy)]}
                near["within_class" if _class_of(pa) == _class_of(pb) else "across_classes"].append(pair)
                near_flat.append(pair)
    for v in near.values():
        v.sort(key=lambda p: (p["a"], p["b"]))
    t_near = time.perf_counter()

    splits = _split_report(rows, Path(splits_csv), rel_paths, groups, near_flat) if rows is not None else None

    counts = {
        "class_folders": int(found.refusal is not None),
        **{k: len(problems[k]) for k in PROBLEM_KINDS},
        "broken": len(found.broken),
        "non_image_files": len(non_image),
        "empty_classes": sum(1 for c in classes if per_class[c]["images"] == 0),
        "exact_within_class": len(exact["within_class"]),
        "exact_across_classes": len(exact["across_classes"]),
        "near_within_class": len(near["within_class"]),
        "near_across_classes": len(near["across_classes"]),
    }
    if splits is not None:
        counts.update({
            "split_exact_leaks": len(splits["exact_duplicates_across_splits"]),
            "split_near_leaks": len(splits["near_duplicates_across_splits"]),
            "split_missing": len(splits["missing"]),
            "split_unlisted": len(splits["unlisted"]),
            "split_listed_twice": len(splits["listed_twice"]),
            "split_label_mismatch": len(splits["label_mismatch"]),
        })
    t_end = time.perf_counter()
    return {
        "version": REPORT_VERSION,
        "root": str(root.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"near_distance": int(near_distance), "min_correlation": float(min_correlation),
                     "max_shift": MAX_SHIFT, "workers": workers, "image_extensions": list(IMG_EXTENSIONS),
                     "positive_class": positive_class},
        "summary": {"clean": not any(counts.values()), "counts": counts},
        "classes": classes,
        # what training would do with these class folders: [negative, positive], or its refusal
        "training": {"classes": None if found.refusal else classes, "refused": found.refusal},
        "per_class": per_class,
        "totals": {"images": len(ok_idx), "files": len(rel_paths) + len(non_image) + len(found.broken),
                   "bytes": sum(c["bytes"] for c in per_class.values())},
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
        "problems": problems,
        "broken": found.broken,
        "non_image_files": non_image,
        "ignored": found.ignored,
        "empty_classes": [c for c in classes if per_class[c]["images"] == 0],
        "exact_duplicates": exact,
        "near_duplicates": near,
        "near_candidates_checked": int(len(cand)),
        "splits": splits,
        "root_files": found.root_files,
        "seconds": {"scan": round(t_scan - t0, 3), "fingerprint": round(t_fp - t_scan, 3),
                    "near_duplicates": round(t_near - t_fp, 3), "total": round(t_end - t0, 3)},
    }


# --- terminal output --------------------------------------------------------------------


def examples(report: dict, key: str) -> list[str]:
    """Short one-line descriptions of the findings under a summary heading."""
    def pair(p):
        return f"{p['a']} ~ {p['b']} (phash {p['phash_distance']}, corr {p['correlation']:.2f})"

    if key == "class_folders":
        return [report["training"]["refused"]] if report["training"]["refused"] else []
    if key in PROBLEM_KINDS:
        return [f"{p['path']}: {p['error']}" for p in report["problems"][key]]
    if key == "broken":
        return [f"{b['path']}: {b['reason']}" for b in report["broken"]]
    if key == "non_image_files":
        return [p["path"] for p in report["non_image_files"]]
    if key == "empty_classes":
        return list(report["empty_classes"])
    if key.startswith("exact_"):
        return [" = ".join(g["paths"]) for g in report["exact_duplicates"][key[len("exact_"):]]]
    if key.startswith("near_"):
        return [pair(p) for p in report["near_duplicates"][key[len("near_"):]]]
    s = report["splits"]
    if key == "split_exact_leaks":
        return [" = ".join(f"{p} [{sp}]" for p, sp in zip(g["paths"], g["splits"]))
                for g in s["exact_duplicates_across_splits"]]
    if key == "split_near_leaks":
        return [f"{p['a']} [{p['split_a']}] ~ {p['b']} [{p['split_b']}]" for p in s["near_duplicates_across_splits"]]
    if key == "split_missing":
        return [f"{p['path']} (line {p['line']})" for p in s["missing"]]
    if key == "split_unlisted":
        return list(s["unlisted"])
    if key == "split_listed_twice":
        return [f"{p['path']} in {p['splits']}" for p in s["listed_twice"]]
    if key == "split_label_mismatch":
        return [f"{p['path']} (line {p['line']}): label {p['label']}, folder {p['folder']}" for p in s["label_mismatch"]]
    return []
