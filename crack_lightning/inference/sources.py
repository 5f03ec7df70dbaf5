"""What ``predict.py input=...`` points at, as a sorted list of image files.

``input`` may be one file, a folder (searched recursively) or a glob pattern. A
folder laid out like the training data -- one sub-folder per class -- also gives the
true labels, so prediction doubles as an evaluation on data the model never saw.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import find_classes

from crack_lightning import CrackLightningError
from crack_lightning.data.dataset import IMG_EXTENSIONS, resolve_class_names


@dataclass
class Inputs:
    files: list[Path]
    # per file: 1 crack, 0 no crack, None outside the class folders; None: no class folders
    labels: list[int | None] | None = None
    class_folders: list[str] | None = None  # [no-crack folder, crack folder] when labelled


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def find_inputs(spec: str, class_names: list[str] | None = None) -> Inputs:
    """Resolve ``spec`` into image files (sorted, so runs and CSVs are reproducible).

    An explicit file is taken whatever its extension (an unreadable one gets an error
    row later); folders and globs keep files with an image extension only.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return Inputs([path])
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image(p))
        if not files:
            raise CrackLightningError(
                f"input={spec}: the folder holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...), "
                f"even in sub-folders. Point input= at a folder of photos, one image or a glob."
            )
        return _labelled(path, files, class_names)
    files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if is_image(Path(p)) and Path(p).is_file())
    if not files:
        raise CrackLightningError(
            f"input={spec}: no such file or folder, and no image matches it as a glob "
            f"(extensions {', '.join(IMG_EXTENSIONS[:4])}, ...). Quote globs on the command "
            f"line so the shell leaves them to predict.py: input='photos/**/*.jpg'."
        )
    return Inputs(files)


def class_folders(root: Path, class_names: list[str] | None) -> list[str] | None:
    """``[no-crack, crack]`` sub-folders of ``root``: the model's class names if both are
    there, else two folders of which one is a crack name (Positive/, crack/, ...)."""
    try:
        folders, _ = find_classes(str(root))
    except FileNotFoundError:  # no sub-folders at all
        return None
    if class_names and all(name in folders for name in class_names):
        return list(class_names)
    try:
        return resolve_class_names(root, positive_class=None)
    except CrackLightningError:  # not two folders, or no crack name among them
        return None


def _labelled(root: Path, files: list[Path], class_names: list[str] | None) -> Inputs:
    folders = class_folders(root, class_names)
    if folders is None:
        return Inputs(files)
    index = {name: label for label, name in enumerate(folders)}
    labels = [index.get(f.relative_to(root).parts[0]) if len(f.relative_to(root).parts) > 1 else None for f in files]
    if not any(label is not None for label in labels):
        return Inputs(files)
    return Inputs(files, labels, folders)
