"""Scan an ImageFolder root into (path, label) samples with crack as label 1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from crack_lightning import CrackLightningError

# Folder names taken to mean "crack" when data.positive_class is not set.
POSITIVE_NAMES = ("positive", "crack", "cracks", "cracked", "defect", "defective")


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute
    label: int  # 1 = crack (positive class), 0 = no crack


def resolve_class_names(root: Path, positive_class: str | None) -> list[str]:
    """Return ``[negative_name, positive_name]`` for the two class folders under ``root``.

    Label indices follow this order, so label 1 is always the crack class whatever
    the folders are called (ImageFolder's alphabetical order would not guarantee it).
    """
    if not root.is_dir():
        raise CrackLightningError(
            f"data.root={root}: no such folder. Point data.root at an ImageFolder with one "
            f"sub-folder per class (e.g. Positive/ and Negative/), or run `make data`."
        )
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        classes = []
    if len(classes) != 2:
        raise CrackLightningError(
            f"data.root={root} holds {len(classes)} class folder(s) {classes}; crack-lightning "
            f"trains a binary crack / no-crack classifier and needs exactly two (e.g. Positive/ "
            f"and Negative/). Move the other folders out of data.root."
        )
    if positive_class is None:
        matches = [c for c in classes if c.lower() in POSITIVE_NAMES]
        if len(matches) != 1:
            raise CrackLightningError(
                f"data.root={root}: cannot tell which of {classes} is the crack class. "
                f"Set data.positive_class=<one of {classes}>."
            )
        positive_class = matches[0]
    if positive_class not in classes:
        raise CrackLightningError(
            f"data.positive_class={positive_class} is not a class folder of {root}; "
            f"choose one of {classes}."
        )
    negative = next(c for c in classes if c != positive_class)
    return [negative, positive_class]


def scan_samples(root: Path, class_names: list[str]) -> list[Sample]:
    """All image files of the two classes, in a stable (sorted) order."""
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    found = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    samples = [Sample(Path(p).resolve(), label) for p, label in sorted(found)]
    for name, idx in class_to_idx.items():
        if not any(s.label == idx for s in samples):
            raise CrackLightningError(
                f"data.root={root}: class folder '{name}' has no images "
                f"({', '.join(IMG_EXTENSIONS[:4])}, ...). Add images or fix data.root."
            )
    return samples


class ImageListDataset(Dataset):
    """Images read with PIL from a list of samples, converted to RGB and transformed."""

    def __init__(self, samples: list[Sample], transform=None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        with Image.open(sample.path) as img:
            image = img.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label
