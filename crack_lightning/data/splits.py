"""Deterministic stratified train/val/test splits, saved as ``splits.csv``.

A fixed, saved split is what makes test numbers trustworthy: the common Keras
recipe (``image_dataset_from_directory(shuffle=True)`` + ``take``/``skip``) reshuffles
every pass, so its "test" set overlaps training.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from sklearn.model_selection import train_test_split

from crack_lightning import CrackLightningError
from crack_lightning.data.settings import check_fractions
from crack_lightning.data.imagefolder import Sample
from crack_lightning.utils.files import atomic_path, write_atomic

SPLITS = ("train", "val", "test")


def stratified_split(samples: list[Sample], fractions, seed: int) -> dict[str, list[Sample]]:
    """Split ``samples`` into train/val/test with the class balance kept in each.

    The same samples, fractions and seed always give the same split.
    """
    train_f, val_f, test_f = check_fractions(fractions)
    labels = [_stratum(s) for s in samples]
    try:
        train, rest = train_test_split(samples, train_size=train_f, stratify=labels, random_state=seed)
        rest_labels = [_stratum(s) for s in rest]
        val, test = train_test_split(
            rest, test_size=test_f / (val_f + test_f), stratify=rest_labels, random_state=seed
        )
    except ValueError as err:  # too few images of a class for a stratified split
        raise CrackLightningError(
            f"Cannot make a stratified {train_f}/{val_f}/{test_f} split of {len(samples)} images: {err}. "
            f"Add images or change data.split.fractions."
        ) from None
    return {"train": train, "val": val, "test": test}


def _stratum(s: Sample):
    """What a split keeps the balance of: the class, and within it the domain when known."""
    return s.label if s.domain is None else f"{s.label}/{s.domain}"


def grouped_split(samples: list[Sample], groups, fractions, seed: int) -> dict[str, list[Sample]]:
    """Split whole groups (e.g. patches of one photo) into train/val/test, stratified by class.

    Greedy: groups go largest first (ties in a seeded random order), each to the
    split where it most reduces the squared shortfall of (split, class) counts
    from their targets, relative to the split's size.  No group spans two splits;
    with ~100 or more groups every split's class balance stays within about a
    point of the whole set's (``tests/test_grouping.py``).
    """
    fractions = np.array(check_fractions(fractions))
    labels = np.unique([str(_stratum(s)) for s in samples], return_inverse=True)[1]
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.zeros((inverse.max() + 1, max(2, labels.max() + 1)))
    np.add.at(counts, (inverse, labels), 1)
    target = fractions[:, None] * counts.sum(0)[None, :]  # (split, class) images wanted
    have = np.zeros_like(target)
    shuffled = np.random.default_rng(seed).permutation(len(counts))
    order = shuffled[np.argsort(-counts[shuffled].sum(1), kind="stable")]
    assign = np.empty(len(counts), np.int64)
    size = np.maximum(target.sum(1), 1)
    for g in order:
        gain = (((have + counts[g] - target) ** 2 - (have - target) ** 2).sum(1)) / size
        k = int(np.argmin(gain))
        assign[g] = k
        have[k] += counts[g]
    if (have.sum(1) == 0).any():
        raise CrackLightningError(
            f"Cannot make a grouped {fractions.tolist()} split: {len(counts)} groups of "
            f"{len(samples)} images leave a split empty. Add images or use data.split.strategy=random."
        )
    return {name: [s for s, g in zip(samples, inverse) if assign[g] == k] for k, name in enumerate(SPLITS)}


def check_support(splits: dict[str, list[Sample]], class_names: list[str], where, test_only: bool = False) -> None:
    """Refuse a split with a class missing from a split: with no crack in validation the
    recall-targeted threshold is chosen on nothing, and with none in test the reported recall
    and AUROC are undefined (torchmetrics gives 0.0), yet the run would end "successfully".
    ``test_only`` (a set to evaluate): only an empty test split is refused; a site sample may
    lack some of the model's classes, and the metrics a class needs say so."""
    if test_only:
        if not splits["test"]:
            raise CrackLightningError(f"{where}: no usable image to evaluate on (see the skipped files above).")
        return
    totals = {name: sum(s.label == k for part in splits.values() for s in part) for k, name in enumerate(class_names)}
    for split in SPLITS:
        present = {s.label for s in splits[split]}
        missing = [name for k, name in enumerate(class_names) if k not in present]
        if missing:
            counts = ", ".join(f"{name} {n}" for name, n in totals.items())
            raise CrackLightningError(
                f"{where}: the {split} split has no '{missing[0]}' image (usable images per class: {counts}), "
                f"so its metrics and the operating threshold would measure nothing. Add images of that class (a few "
                f"per split at least), or change data.split.fractions.")


def write_splits(path: Path, splits: dict[str, list[Sample]], root: Path, class_names: list[str],
                 info: dict | None = None, groups: dict[Path, int | str] | None = None,
                 positive: list[int] = (1,)) -> None:
    """Write ``path,label,split[,group][,domain]`` rows (paths relative to ``root``), atomically.

    ``info`` (how the split was made: strategy, seed, fractions, ...) goes to the
    ``splits.json`` beside it, with the size and crack share (``positive`` classes) of every
    split, and with more than two classes the images per class."""
    if info is not None:  # before the CSV: a CSV is never newer than its description
        summary = {}
        for name, part in splits.items():
            summary[name] = {"images": len(part),
                             "crack_share": round(sum(s.label in positive for s in part) / max(1, len(part)), 4)}
            if len(class_names) > 2:
                summary[name]["classes"] = {c: sum(s.label == k for s in part) for k, c in enumerate(class_names)}
        write_atomic(split_info_path(path), json.dumps({**info, "splits": summary}, indent=2) + "\n")
    domains = any(s.domain is not None for part in splits.values() for s in part)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"] + (["group"] if groups is not None else [])
                        + (["domain"] if domains else []))
        for split in SPLITS:
            for s in splits[split]:
                # under root as a relative path; a manifest's absolute path elsewhere as it is
                where = s.path.relative_to(root) if s.path.is_relative_to(root) else s.path
                row = [where.as_posix(), class_names[s.label], split]
                writer.writerow(row + ([groups[s.path]] if groups is not None else [])
                                + ([s.domain or ""] if domains else []))


def split_info_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def read_split_info(path: Path) -> dict | None:
    """How a saved split was made (``splits.json``), or ``None`` if not recorded."""
    try:
        return json.loads(split_info_path(path).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SplitRow:
    path: str           # posix, relative to the dataset root ("" when the cell is empty)
    split: str
    label: str | None   # None when the file has no label column or the cell is empty
    line: int           # line number in the file, for messages
    domain: str | None = None
    group: str | None = None  # the photo / manifest group, when the split was grouped


def read_split_rows(path: Path, root: Path) -> list[SplitRow]:
    """The rows of a ``splits.csv`` (``path,label,split``; other columns ignored) as written,
    unchecked: the validator reports what is wrong with them, :func:`read_splits` refuses it.
    Errors name ``path`` first (the caller may prefix its option name)."""
    path = Path(path)
    if not path.is_file():
        raise CrackLightningError(f"{path}: no such file. Pass the splits.csv a training run wrote.")
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "path" not in fields or "split" not in fields:
                raise CrackLightningError(
                    f"{path}: needs the columns path and split (found {fields}). "
                    f"Pass a splits.csv written by a training run (path,label,split).")
            root_abs = Path(root).resolve()
            return [SplitRow(_relative(row.get("path") or "", root_abs), (row.get("split") or "").strip(),
                             (row.get("label") or "").strip() or None, line, (row.get("domain") or "").strip() or None,
                             (row.get("group") or "").strip() or None)
                    for line, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError) as err:
        raise CrackLightningError(f"{path}: cannot read it ({err}). Pass a readable splits.csv.") from None


def _relative(cell: str, root_abs: Path) -> str:
    """A path cell as a normalised posix path under the resolved root (absolute ones too)."""
    raw = cell.strip()
    if not raw:
        return ""
    p = Path(raw)
    if p.is_absolute():  # its folder resolved, not the file: a link stays a path under root
        try:
            p = (Path(os.path.realpath(p.parent)) / p.name).relative_to(root_abs)
        except ValueError:
            pass
    return PurePosixPath(os.path.normpath(p.as_posix())).as_posix()


def read_splits(path: Path, root: Path, class_names: list[str]) -> dict[str, list[Sample]]:
    """Read a ``splits.csv`` written by :func:`write_splits` for the dataset at ``root``."""
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    root = Path(root).resolve()  # samples are paths under the root, links not followed (scan_files)
    for row in read_split_rows(path, root):
        if row.split not in splits or row.label not in class_to_idx:
            raise CrackLightningError(
                f"{path}:{row.line}: expected split in {list(SPLITS)} and label in {class_names}, "
                f"got split={row.split!r}, label={row.label!r}. Delete the file to make a new split."
            )
        file = root / row.path
        if not row.path or not file.is_file():
            raise CrackLightningError(
                f"{path}:{row.line}: {file} is listed in the saved split but missing under data.root. "
                f"Restore the file, or delete {path.name} to make a new split."
            )
        splits[row.split].append(Sample(file, class_to_idx[row.label], row.domain))
    return splits
