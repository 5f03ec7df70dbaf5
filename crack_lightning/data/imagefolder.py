"""The one owner of what an ImageFolder is: image extensions, system names, class folders, scanning.

Training, ``crack-validate``, ``crack-data`` (counting, finding the dataset in an archive) and
``predict.py input=`` all ask this module which files of a folder are images of which class, so
they can never disagree (timm's
``timm/data/readers/img_extensions.py`` owns its extension list the same way). Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crack_lightning import CrackLightningError

# Same as torchvision.datasets.folder.IMG_EXTENSIONS (what ImageFolder loads), without torch.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Folder names taken to mean "crack" when data.positive_class is not set.
POSITIVE_NAMES = ("positive", "crack", "cracks", "cracked", "defect", "defective")
# Folders that archives and file managers leave behind: never classes, never scanned.
SYSTEM_FOLDERS = ("__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information")
# scan_files' reason for a file without an image extension (validate reports those as findings)
NOT_AN_IMAGE_NAME = "not an image file name"


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute, under the dataset root (a link there may point elsewhere)
    label: int  # index into the class names (two classes: 1 = crack, 0 = no crack)
    domain: str | None = None  # where it was taken (SDNET2018's D/P/W), when the layout or manifest says


def is_system_name(name: str) -> bool:
    """Hidden (``.DS_Store``, ``._x.jpg`` AppleDouble files, ``.ipynb_checkpoints``) or an
    archive/file-manager leftover: not part of the dataset, whatever its extension."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def has_image_extension(name: str) -> bool:
    """One of :data:`IMG_EXTENSIONS`, in any case (``x.JPG`` too)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def is_image_name(name: str) -> bool:
    """A file name training takes as an image: an image extension, not hidden or system."""
    return not is_system_name(name) and has_image_extension(name)


def class_folders(root: Path) -> list[str]:
    """The class sub-folders of ``root`` (sorted), hidden and system folders left out."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not is_system_name(e.name))


def outside_classes(root: Path, classes: list[str]) -> tuple[list[str], list[str]]:
    """``(files, folders)`` directly in ``root`` that are no class folder (a dataset card,
    ``synthetic.json``, ``__MACOSX/``): never scanned, listed by the validator."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    return ([e.name for e in entries if not e.is_dir()],
            [e.name for e in entries if e.is_dir() and e.name not in classes])


def find_imagefolder(top: Path, classes: list[str], depth: int = 2) -> Path | None:
    """The shallowest folder under ``top`` (``top`` included, ``depth`` levels down) holding
    all of ``classes`` as class folders, e.g. the dataset inside an extracted archive. Hidden
    and system folders (an archive's ``__MACOSX/`` copy) and links are not searched."""
    level = [Path(top)]
    for _ in range(depth + 1):
        for folder in level:
            if set(classes) <= set(class_folders(folder)):
                return folder
        level = sorted(p for f in level for p in f.iterdir()
                       if p.is_dir() and not p.is_symlink() and not is_system_name(p.name))
    return None


def resolve_class_names(root: Path, positive_classes=None) -> list[str]:
    """The class folders under ``root`` in label order (:func:`order_classes`): for two,
    ``[no crack, crack]``, so label 1 is the crack class whatever the folders are called.
    Each refusal is one line naming ``data.root`` / ``data.positive_classes`` and the fix."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "no such folder"
        raise CrackLightningError(
            f"data.root={root}: {what}. Point data.root at an ImageFolder with one "
            f"sub-folder per class (e.g. Positive/ and Negative/), or run `make data`."
        )
    classes = class_folders(root)
    if len(classes) < 2:
        inner = [c for c in classes if len(class_folders(root / c)) >= 2]
        hint = (f"Did you mean data.root={root / inner[0]}?" if inner else
                "Add the missing class folder (e.g. Positive/ for cracks and Negative/ for the rest), "
                "with images in each.")
        raise CrackLightningError(
            f"data.root={root} holds {len(classes)} class folder(s) {classes}; a classifier needs at least "
            f"two. {hint}")
    return order_classes(classes, positive_classes, where=f"data.root={root}")[0]


def order_classes(names: list[str], positive_classes=None, where: str = "the data") -> tuple[list[str], list[int]]:
    """``(class names in label order, indices of the crack classes)``.

    ``positive_classes`` (``data.positive_classes``: a name or a list) says which classes are
    cracks; by default the one(s) named like :data:`POSITIVE_NAMES`. Two classes keep the order
    ``[no crack, crack]``; more are sorted (ImageFolder's order). At least one class must be a
    crack and one not: the crack extras (operating threshold, missed cracks) read P(any crack).

    >>> order_classes(["Positive", "Negative"])
    (['Negative', 'Positive'], [1])
    >>> order_classes(["stain", "crack", "clean", "joint"])
    (['clean', 'crack', 'joint', 'stain'], [1])
    """
    names = sorted(set(names))
    if isinstance(positive_classes, str):
        positive_classes = [positive_classes]
    if positive_classes is None:
        positive = [c for c in names if c.lower() in POSITIVE_NAMES]
        if not positive:
            raise CrackLightningError(
                f"{where}: cannot tell which of {names} is the crack class. "
                f"Set data.positive_classes=[<one or more of {names}>].")
    else:
        positive = [str(c) for c in positive_classes]
        if unknown := [c for c in positive if c not in names]:
            raise CrackLightningError(
                f"data.positive_classes={positive}: {unknown[0]} is not a class of {where}; choose from {names}.")
    if len(set(positive)) == len(names):
        raise CrackLightningError(
            f"data.positive_classes={positive}: every class of {where} is a crack class; leave at least one "
            f"for the rest (e.g. no crack), so missed cracks and the crack threshold mean something.")
    if len(names) == 2:
        names = [next(c for c in names if c not in positive), positive[0]]
    return names, [i for i, c in enumerate(names) if c in positive]


def scan_files(root: Path, class_names: list[str]) -> tuple[list[Sample], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Walk the class folders: ``(samples, broken, ignored)``. The one rule for which files of an
    ImageFolder are images of which class (training, validation and prediction use it).

    ``samples``: every file with an image extension (nested folders included, as ImageFolder
    does), in sorted order, by its path under ``root``; symbolic links are followed, to files
    outside ``root`` too (a dataset made of links to the originals). Not yet checked (see
    :mod:`~crack_lightning.data.quality.screening`). ``broken``: image-named entries that cannot even be
    resolved (dangling symlink, symlink loop) and unreadable folders. ``ignored``: what is not
    part of the dataset: hidden and system files and folders, other extensions (``Thumbs.db``),
    a second path to a file already found (a real file wins over a link to it, so a link from one
    class into another never relabels an image), a folder reached again through a symlink
    (loops are walked once).
    """
    root = Path(root).resolve()
    return _scan(root, [(root / name, label) for label, name in enumerate(class_names)])


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` by :func:`scan_files`' rule (nested folders, links
    followed, hidden and system names and second paths left out), sorted; paths under the
    resolved ``folder``. For a folder of photos that is no ImageFolder (``predict.py input=``)."""
    folder = Path(folder).resolve()
    samples, _, _ = _scan(folder, [(folder, 0)])
    return [s.path for s in samples]


def count_images(root: Path, class_names: list[str]) -> dict[str, int]:
    """Image files per class folder by :func:`scan_files` (0 for a missing folder; ``{}``
    when ``root`` is no folder). Names only: nothing is opened."""
    if not Path(root).is_dir():
        return {}
    samples, _, _ = scan_files(root, class_names)
    return {name: sum(s.label == label for s in samples) for label, name in enumerate(class_names)}


def _scan(root: Path, tops: list[tuple[Path, int]]) -> tuple[list[Sample], list, list]:
    """:func:`scan_files`' walk of ``tops`` (folder, label), all under the resolved ``root``."""
    found, broken, ignored = [], [], []  # found: (is_link, path under root, real path, label)
    # root counts as walked (a link back to it is a loop) unless it is itself what is walked
    seen_dirs = set() if any(top == root for top, _ in tops) else {_dir_id(root)}
    # One walk. The folders really in the class folders come first, the folders links lead to
    # after: a link to a folder already walked (a loop, or a link from class A into a sub-folder
    # of B) is then skipped, and never makes B's images A's.
    real, linked = list(tops), []
    while real or linked:
        top, label = real.pop(0) if real else linked.pop(0)
        errors = []
        for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append):
            here = Path(dirpath)
            if _dir_id(here) in seen_dirs:
                ignored.append((here, "folder already scanned (symlink loop or second link)"))
                dirnames[:] = []
                continue
            seen_dirs.add(_dir_id(here))
            for d in sorted(dirnames):
                if is_system_name(d):
                    ignored.append((here / d, "hidden or system folder"))
                elif os.path.islink(here / d):
                    linked.append((here / d, label))
            dirnames[:] = sorted(d for d in dirnames if not is_system_name(d) and not os.path.islink(here / d))
            real_dir = Path(os.path.realpath(here))  # once per folder: resolving each file costs
            for f in sorted(filenames):
                path = here / f
                if is_system_name(f):
                    ignored.append((path, "hidden or system file (e.g. .DS_Store, ._* AppleDouble)"))
                elif not has_image_extension(f):
                    ignored.append((path, f"{NOT_AN_IMAGE_NAME} (extensions {', '.join(IMG_EXTENSIONS)})"))
                elif not os.path.islink(path):
                    found.append((False, path, real_dir / f, label))
                else:
                    try:
                        found.append((True, path, path.resolve(strict=True), label))
                    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
                        broken.append((path, f"broken link: {getattr(err, 'strerror', None) or err}"))
        broken += [(Path(e.filename), f"unreadable folder: {e.strerror}") for e in errors]
    samples, first_path = [], {}
    for _, path, real, label in sorted(found, key=lambda item: (item[0], item[1])):  # real files first
        if real in first_path:
            ignored.append((path, f"same file as {first_path[real]}"))
        else:
            first_path[real] = path
            samples.append(Sample(path, label))
    samples.sort(key=lambda s: s.path)
    return samples, broken, ignored


def _dir_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def check_classes(root: Path, class_names: list[str], samples: list[Sample], skipped: int = 0) -> None:
    """Refuse a class without (usable) images: one line naming the folder and the fix."""
    for idx, name in enumerate(class_names):
        if not any(s.label == idx for s in samples):
            why = ("no usable images: its image files were all skipped as bad (listed in "
                   "skipped_files.txt in the run folder)" if skipped else
                   f"no images ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
            raise CrackLightningError(
                f"data.root={root}: class folder '{name}' has {why}. Add images or fix data.root.")


def scan_samples(root: Path, class_names: list[str]) -> list[Sample]:
    """All image files of the classes, in a stable (sorted) order (unchecked)."""
    samples, _, _ = scan_files(root, class_names)
    check_classes(root, class_names, samples)
    return samples
