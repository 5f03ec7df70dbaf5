"""Deterministic stratified train/val/test splits, saved as ``splits.csv``.

A fixed, saved split is what makes test numbers trustworthy: the common Keras
recipe (``image_dataset_from_directory(shuffle=True)`` + ``take``/``skip``) reshuffles
every pass, so its "test" set overlaps training.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from sklearn.model_selection import train_test_split

from crack_lightning import CrackLightningError
from crack_lightning.data.dataset import Sample

SPLITS = ("train", "val", "test")


def check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise CrackLightningError(
            f"data.split_fractions={list(fractions)}: give three positive fractions "
            f"[train, val, test] that sum to 1, e.g. [0.8, 0.1, 0.1]."
        )
    return fractions


def stratified_split(samples: list[Sample], fractions, seed: int) -> dict[str, list[Sample]]:
    """Split ``samples`` into train/val/test with the class balance kept in each.

    The same samples, fractions and seed always give the same split.
    """
    train_f, val_f, test_f = check_fractions(fractions)
    labels = [s.label for s in samples]
    try:
        train, rest = train_test_split(samples, train_size=train_f, stratify=labels, random_state=seed)
        rest_labels = [s.label for s in rest]
        val, test = train_test_split(
            rest, test_size=test_f / (val_f + test_f), stratify=rest_labels, random_state=seed
        )
    except ValueError as err:  # too few images of a class for a stratified split
        raise CrackLightningError(
            f"Cannot make a stratified {train_f}/{val_f}/{test_f} split of {len(samples)} images: {err}. "
            f"Add images or change data.split_fractions."
        ) from None
    return {"train": train, "val": val, "test": test}


def write_splits(path: Path, splits: dict[str, list[Sample]], root: Path, class_names: list[str]) -> None:
    """Write ``path,label,split`` rows (paths relative to ``root``), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: no rename races
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for split in SPLITS:
            for s in splits[split]:
                writer.writerow([s.path.relative_to(root).as_posix(), class_names[s.label], split])
    tmp.replace(path)


def read_splits(path: Path, root: Path, class_names: list[str]) -> dict[str, list[Sample]]:
    """Read a ``splits.csv`` written by :func:`write_splits` for the dataset at ``root``."""
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            if row.get("split") not in splits or row.get("label") not in class_to_idx:
                raise CrackLightningError(
                    f"{path}:{line}: expected split in {list(SPLITS)} and label in {class_names}, "
                    f"got {row}. Delete the file to make a new split."
                )
            file = (root / row["path"]).resolve()
            if not file.is_file():
                raise CrackLightningError(
                    f"{path}:{line}: {file} is listed in the saved split but missing under data.root. "
                    f"Restore the file, or delete {path.name} to make a new split."
                )
            splits[row["split"]].append(Sample(file, class_to_idx[row["label"]]))
    return splits
