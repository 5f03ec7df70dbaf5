"""What ``predict.py input=...`` points at, as a sorted list of image files.

``input`` may be one file, a folder (searched recursively) or a glob pattern. A
folder laid out like the training data -- one sub-folder per class -- also gives the
true labels, so prediction doubles as an evaluation on data the model never saw. Which
files of a folder or glob are images is training's rule (:mod:`crack_lightning.data.imagefolder`).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from crack_lightning import CrackLightningError
from crack_lightning.data.augmentation import eval_transform
from crack_lightning.data.imagefolder import (
    IMG_EXTENSIONS, class_folders as sub_folders, has_image_extension, image_files, is_system_name, resolve_class_names,
)
from crack_lightning.data.dataset import to_rgb
from crack_lightning.model_card import Preprocessing


@dataclass
class Inputs:
    files: list[Path]
    # per file: its class folder's index in class_folders (the model's label), None outside them;
    # None: no class folders
    labels: list[int | None] | None = None
    class_folders: list[str] | None = None  # in label order when labelled (two: [no-crack, crack])


def find_inputs(spec: str, class_names: list[str] | None = None) -> Inputs:
    """Resolve ``spec`` into image files (sorted, so runs and CSVs are reproducible).

    An explicit file is taken whatever its extension (an unreadable one gets an error
    row later); folders and globs keep what training would take as images only.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return Inputs([path])
    if path.is_dir():
        base = path.resolve()  # image_files gives resolved paths; rows keep the folder as given
        files = [path / f.relative_to(base) for f in image_files(path)]
        if not files:
            raise CrackLightningError(
                f"input={spec}: the folder holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...), "
                f"even in sub-folders. Point input= at a folder of photos, one image or a glob."
            )
        return labelled(path, files, class_names)
    files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if in_glob(Path(p), path))
    if not files:
        raise CrackLightningError(
            f"input={spec}: no such file or folder, and no image matches it as a glob "
            f"(extensions {', '.join(IMG_EXTENSIONS[:4])}, ...). Quote globs on the command "
            f"line so the shell leaves them to predict.py: input='photos/**/*.jpg'."
        )
    return Inputs(files)


def in_glob(match: Path, pattern: Path) -> bool:
    """A glob match training would take as an image: an image extension, and no hidden or
    system name (``__MACOSX/``, ``._x.jpg``) in the part the pattern matched."""
    literal = next((k for k, part in enumerate(pattern.parts) if glob.has_magic(part)), len(pattern.parts))
    return (has_image_extension(match.name) and match.is_file()
            and not any(is_system_name(part) for part in match.parts[literal:]))


def class_folders(root: Path, class_names: list[str] | None) -> list[str] | None:
    """The class sub-folders of ``root`` in label order: the model's class names if all are
    there; else the folders training would take (one named like a crack: Positive/, crack/, ...)
    -- for a model of two classes only two, ``[no-crack, crack]``, whatever their names (more
    classes have no order that would match other names to the model's)."""
    folders = sub_folders(root)
    if class_names and all(name in folders for name in class_names):
        return list(class_names)
    try:
        found = resolve_class_names(root)
    except CrackLightningError:  # fewer than two folders, or no crack name among them
        return None
    return found if class_names is None or len(class_names) == len(found) == 2 else None


def labelled(root: Path, files: list[Path], class_names: list[str] | None) -> Inputs:
    """``files`` under ``root`` with the label of their class folder, when ``root`` has class folders."""
    folders = class_folders(root, class_names)
    if folders is None:
        return Inputs(files)
    index = {name: label for label, name in enumerate(folders)}
    labels = [index.get(f.relative_to(root).parts[0]) if len(f.relative_to(root).parts) > 1 else None for f in files]
    if not any(label is not None for label in labels):
        return Inputs(files)
    return Inputs(files, labels, folders)


def reason(err: Exception) -> str:
    """An exception as the one-line ``error`` cell of its row."""
    return f"{type(err).__name__}: {err}".replace("\n", " ")


class ImageFiles(Dataset):
    """``files`` preprocessed as validation images are (``eval_transform`` of the model's
    ``preprocessing``), each with ``""`` -- or a zero placeholder and the reason when the
    file cannot be read, so one bad file never stops a batch."""

    def __init__(self, files: list[Path], preprocessing: Preprocessing):
        self.files = files
        self.input_size = preprocessing.input_size
        self.transform = eval_transform(preprocessing.to_timm_data_config())

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            with Image.open(self.files[index]) as img:
                return self.transform(to_rgb(img)), ""
        except Exception as err:  # not an image, truncated, unsupported mode, unreadable ...
            return torch.zeros(3, *self.input_size), reason(err)
