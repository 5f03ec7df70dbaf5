"""What a dataset's labelled images are, from any of its three forms -- one owner for all.

* an **ImageFolder** (``data.root``): one folder per class, any number (>= 2) of them;
* a **class map** (``data.class_map``): folders under ``data.root`` (nested ones too, e.g.
  SDNET2018's ``D/CD``) mapped to class names; the top folder of a nested path is the
  image's ``domain`` (D, P, W);
* a **manifest** (``data.manifest``): a CSV or Parquet table with ``path,label`` and optional
  ``group``, ``split`` and ``domain`` columns, paths relative to the manifest's folder.

:class:`LabelledSet` gives the class names (cheaply: folder names, map values or the
manifest's labels -- known before the model is built, which sizes its head) and the scan of
the images (:class:`Scanned`), which screening, splitting and training take from here. Torch-free.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from crack_lightning import CrackLightningError
from crack_lightning.data.imagefolder import (
    Sample, class_folders, has_image_extension, order_classes, resolve_class_names, scan_files,
)

SPLIT_NAMES = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label")  # required; group, split and domain are optional


@dataclass
class Scanned:
    """The images of a labelled set, unchecked, and what was left out.

    ``groups`` / ``splits``: a manifest's ``group`` / ``split`` per image, when it has them."""

    root: Path
    samples: list[Sample]
    broken: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)
    groups: dict[Path, str] | None = None
    splits: dict[Path, str] | None = None


class LabelledSet:
    """The labelled images of one dataset (see the module doc for its three forms).

    Args:
        root: ``data.root`` (ignored for a manifest: its paths are relative to its own folder).
        positive_classes: ``data.positive_classes``, a class name or a list of them; default:
            the crack-like names (Positive/, crack/, ...).
        class_map: ``data.class_map``, ``{folder under root: class name}``.
        manifest: ``data.manifest``, a ``.csv`` or ``.parquet`` file.
        synthetic_classes: the class folders ``data.synthetic`` will generate at ``root``, so the
            classes are known before the images exist (the demo's first run).
        model_classes: ``(class names, crack labels)`` of the model that will score the images
            (evaluate.py, recalibrate.py): labels index these. The set's classes must be among
            them; a two-class set named otherwise is read crack to crack (``Positive`` -> ``crack``).
    """

    def __init__(self, root: Path | str, positive_classes=None, class_map: dict | None = None,
                 manifest: Path | str | None = None, synthetic_classes: list[str] | None = None,
                 model_classes: tuple[list[str], list[int]] | None = None):
        if class_map and manifest:
            raise CrackLightningError("data.class_map and data.manifest are both set: a manifest gives each image "
                                      "its label already; set one of them (the other to null).")
        self.manifest = Path(manifest).expanduser().resolve() if manifest else None
        self.root = self.manifest.parent if self.manifest else Path(root).expanduser().resolve()
        self.positive_classes = positive_classes
        self.class_map = _check_map(class_map) if class_map else None
        self.synthetic_classes = synthetic_classes
        self.model_classes = model_classes
        self.rename: dict[str, str] | None = None  # with model_classes: the set's class -> the model's
        self._rows: list[dict] | None = None

    @property
    def where(self) -> str:
        return f"data.manifest={self.manifest}" if self.manifest else f"data.root={self.root}"

    def classes(self) -> tuple[list[str], list[int]]:
        """``(class names in label order, indices of the crack classes)``: the set's own, or
        with ``model_classes`` the model's."""
        if self.model_classes:
            return self._as_model(self._found(own_names=True))
        found = self._found()
        if len(found) < 2:
            raise CrackLightningError(f"{self.where}: {len(found)} class(es) {sorted(found)}; a classifier needs "
                                      f"at least two.")
        return order_classes(sorted(found), self.positive_classes, self.where)

    def _found(self, own_names: bool = False) -> set[str]:
        """The set's class names (``own_names``: plain folder names as they are, when a model's names
        are asked for: they need not look like crack names)."""
        if self.manifest:
            found = {row["label"] for row in self.rows()}
        elif self.class_map:
            found = set(self.class_map.values())
        elif self.synthetic_classes and not (self.root.is_dir() and class_folders(self.root)):
            found = {PurePosixPath(f).parts[0] for f in self.synthetic_classes}  # not generated yet: its top folders
        elif own_names and self.root.is_dir() and set(class_folders(self.root)) <= set(self.model_classes[0]):
            found = set(class_folders(self.root))
        else:  # refuses a missing root or fewer than two folders in one line
            found = resolve_class_names(self.root, self.positive_classes)
        return set(found)

    def _as_model(self, found: set[str]) -> tuple[list[str], list[int]]:
        names, positive = (list(x) for x in self.model_classes)
        if found and found <= set(names):
            self.rename = {name: name for name in found}
        elif len(found) == 2 and len(names) == 2:  # [no crack, crack] to [no crack, crack]
            own, _ = order_classes(sorted(found), self.positive_classes, self.where)
            self.rename = {own[0]: names[1 - positive[0]], own[1]: names[positive[0]]}
        else:
            raise CrackLightningError(
                f"{self.where}: its classes {sorted(found)} are not the model's {names}; name the folders (or the "
                f"manifest's labels) as the model's classes, or map them with data.class_map={{<folder>: <class>}}.")
        return names, positive

    def _index(self, class_names: list[str]) -> dict[str, int]:
        """Label of each of the set's class names (with ``model_classes``: the model's label)."""
        index = {name: label for label, name in enumerate(class_names)}
        return {own: index[model] for own, model in self.rename.items()} if self.rename else index

    def scan(self, class_names: list[str]) -> Scanned:
        """Every image of the set, labelled by ``class_names``' order (unchecked)."""
        if self.manifest:
            return self._scan_manifest(class_names)
        index = self._index(class_names)
        if not self.class_map and self.rename:  # the set's own folders, labelled as the model's classes
            folders = sorted(self.rename)
            samples, broken, ignored = scan_files(self.root, folders)
            return Scanned(self.root, [Sample(s.path, index[folders[s.label]], s.domain) for s in samples],
                           broken, ignored)
        if not self.class_map:
            return Scanned(self.root, *scan_files(self.root, class_names))
        folders = list(self.class_map)
        if missing := [f for f in folders if not (self.root / f).is_dir()]:
            raise CrackLightningError(f"data.class_map: {missing[0]} is no folder under data.root={self.root}; "
                                      f"map the folders that are there ({', '.join(class_folders(self.root))}).")
        samples, broken, ignored = scan_files(self.root, folders)
        nested = any("/" in f for f in folders)  # D/CD: the top folder is the domain
        for i, s in enumerate(samples):
            folder = folders[s.label]
            domain = PurePosixPath(folder).parts[0] if nested else None
            samples[i] = Sample(s.path, index[self.class_map[folder]], domain)
        return Scanned(self.root, samples, broken, ignored)

    def rows(self) -> list[dict]:
        """The manifest's rows (``path``, ``label`` and the optional columns), read once."""
        if self._rows is None:
            self._rows = read_manifest(self.manifest)
        return self._rows

    def _scan_manifest(self, class_names: list[str]) -> Scanned:
        index = self._index(class_names)
        samples, broken, ignored, groups, splits = [], [], [], {}, {}
        seen: dict[Path, str] = {}
        for row in self.rows():
            path = Path(row["path"])
            path = path if path.is_absolute() else self.root / path
            if path in seen:
                if seen[path] != row["label"]:
                    raise CrackLightningError(f"{self.manifest}:{row['line']}: {row['path']} is listed twice, as "
                                              f"{seen[path]} and {row['label']}; give each image one label.")
                ignored.append((path, "listed twice in the manifest"))
                continue
            seen[path] = row["label"]
            if not has_image_extension(path.name):
                ignored.append((path, "not an image file name"))
            elif not path.is_file():
                broken.append((path, "listed in the manifest but missing"))
            else:
                samples.append(Sample(path, index[row["label"]], row.get("domain") or None))
                if row.get("group") is not None:
                    groups[path] = row["group"]
                if row.get("split") is not None:
                    splits[path] = row["split"]
        samples.sort(key=lambda s: s.path)
        return Scanned(self.root, samples, broken, ignored, groups or None, splits or None)


def _check_map(class_map) -> dict[str, str]:
    """``data.class_map`` as ``{posix folder: class}``; one line for a wrong entry."""
    try:
        items = {str(PurePosixPath(str(k).strip("/"))): str(v) for k, v in dict(class_map).items()}
    except (TypeError, ValueError):
        raise CrackLightningError(f"data.class_map={class_map}: give a mapping of folders under data.root to class "
                                  f"names, e.g. {{D/CD: crack, D/UD: no_crack}}.") from None
    for folder in items:
        if folder in ("", ".") or ".." in PurePosixPath(folder).parts:
            raise CrackLightningError(f"data.class_map: {folder!r} is no folder under data.root; use paths like D/CD.")
        inside = [f for f in items if f != folder and PurePosixPath(folder).is_relative_to(f)]
        if inside:
            raise CrackLightningError(f"data.class_map: {folder} lies inside {inside[0]}, so its images would have "
                                      f"two labels; map folders that do not nest.")
    return items


def read_manifest(path: Path) -> list[dict]:
    """The rows of a ``.csv`` / ``.parquet`` manifest as dicts of stripped strings (``None`` for
    an empty optional cell), each with its ``line``; one line naming the file for what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CrackLightningError(f"data.manifest={path}: no such file. Give a .csv or .parquet table with the "
                                  f"columns path,label (and optionally group, split, domain).")
    if path.suffix.lower() == ".parquet":
        columns, records = _read_parquet(path)
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                columns, records = list(reader.fieldnames or []), list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise CrackLightningError(f"data.manifest={path}: cannot read it ({err}).") from None
    else:
        raise CrackLightningError(f"data.manifest={path}: a {path.suffix or 'nameless'} file; give a .csv or .parquet.")
    columns = [str(c).strip() for c in columns]
    if lacks := [c for c in MANIFEST_COLUMNS if c not in columns]:
        raise CrackLightningError(f"data.manifest={path}: lacks the column(s) {', '.join(lacks)} (found {columns}); "
                                  f"it needs path,label and may have group, split, domain.")
    rows = []
    for line, record in enumerate(records, start=2):
        row = {str(k).strip(): (str(v).strip() if v is not None and str(v).strip() not in ("", "nan", "None")
                                else None) for k, v in record.items()}
        if not row.get("path") or not row.get("label"):
            raise CrackLightningError(f"{path}:{line}: empty path or label; every row needs both.")
        if row.get("split") is not None and row["split"] not in SPLIT_NAMES:
            raise CrackLightningError(f"{path}:{line}: split={row['split']!r}; choose {', '.join(SPLIT_NAMES)} "
                                      f"(or leave the whole column out to let the run split).")
        rows.append({**row, "line": line})
    if "split" in columns and any(r.get("split") is None for r in rows):
        empty = next(r["line"] for r in rows if r.get("split") is None)
        raise CrackLightningError(f"{path}:{empty}: no split, while other rows have one; give every row a split "
                                  f"(train, val, test), or drop the column to let the run split.")
    return rows


def _read_parquet(path: Path) -> tuple[list[str], list[dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # a core dependency; only a trimmed install lacks it
        raise CrackLightningError(f"data.manifest={path}: reading Parquet needs pyarrow (pip install pyarrow); "
                                  f"or save the manifest as .csv.") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's errors for damaged files vary
        raise CrackLightningError(f"data.manifest={path}: cannot read it as Parquet ({type(err).__name__}).") from None
    return table.column_names, table.to_pylist()


def labelled_set(root, positive_classes=None, class_map=None, manifest=None, synthetic: dict | None = None,
                 model_classes: tuple[list[str], list[int]] | None = None) -> LabelledSet:
    """The ``data`` config's labelled set (the data module's, and train.py's before it builds the
    model: the number of classes sizes the head)."""
    return LabelledSet(root, positive_classes, class_map, manifest,
                       synthetic_classes=synthetic_classes(synthetic) if synthetic else None,
                       model_classes=model_classes)


def synthetic_classes(params: dict) -> list[str]:
    """The class folders ``data.synthetic`` generates (known before it has run)."""
    from crack_lightning.data.synthetic.generate import class_folders_of

    return class_folders_of(**dict(params))


def data_classes(data) -> dict:
    """``num_classes``, ``class_names`` and ``positive_classes`` (labels) of a ``data`` config
    node, as the model takes them."""
    names, positive = labelled_set(data.get("root"), data.get("positive_classes"), data.get("class_map"),
                                   data.get("manifest"), data.get("synthetic")).classes()
    return {"num_classes": len(names), "class_names": names, "positive_classes": positive}
