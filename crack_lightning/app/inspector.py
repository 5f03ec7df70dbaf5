"""What the inspectors' app does, without the page: score uploads, move the threshold, flag errors.

:class:`Inspector` holds one model (a ``.ckpt`` or ``.onnx`` at an operating point) and writes
only into its run folder (``output_dir``: the uploads Gradio keeps, ``batches/<k>/predictions.csv``
and heatmaps) and into ``flag_dir``. Scoring is ``predict.py``'s own (:func:`predict.score`) and so
is the CSV (:func:`predict.write_predictions`): the file a user downloads is the one ``predict.py``
writes for the same images. A new threshold rewrites it from the stored scores, no forward pass.

A flagged image is copied into ``flag_dir/<class>/`` -- an ImageFolder with the model's class names,
which ``train.py data.root=`` and ``recalibrate.py data.root=`` take as it is -- and recorded in
``flag_dir/flags.csv`` (file, label, the model's answer and hash, time): the loop from the field
back to the model.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.data.imagefolder import image_files, is_image_name, is_system_name
from crack_lightning.data.quality.screening import header_problem
from crack_lightning.evaluation.operating_point import at_threshold
from crack_lightning.inference import predict
from crack_lightning.inference.backends import Backend, open_backend
from crack_lightning.inference.sources import Inputs
from crack_lightning.utils.files import atomic_path

log = logging.getLogger(__name__)

OWN_POINT = "the model's own"
FLAG_COLUMNS = ["file", "label", "crack_probability", "threshold", "model_hash", "source", "flagged_at"]


@dataclass
class Batch:
    """One analysis: the scores of its images and the folder its predictions.csv goes to."""

    folder: Path
    scores: predict.Scores
    refused: list[str]  # uploads not scored, each with why (a bomb header, a broken zip)
    threshold: float = 0.5

    @property
    def tiled(self) -> bool:
        return self.scores.photos is not None


class Inspector:
    """The app's model and its folders (``cfg``: conf/app.yaml)."""

    def __init__(self, cfg: DictConfig, backend: Backend | None = None):
        self.cfg = cfg
        self.device = predict.resolve_device(str(cfg.device))
        self.backend = backend or open_backend(cfg.ckpt, self.device, cfg.get("operating_point"))
        self.point = cfg.get("operating_point") or OWN_POINT
        self.out, self.flag_dir = Path(cfg.output_dir), Path(cfg.flag_dir)
        self._count, self._lock = itertools.count(1), threading.Lock()
        if self.flag_dir.is_dir() and any(self.flag_dir.iterdir()) and not (self.flag_dir / "flags.csv").is_file():
            raise CrackLightningError(f"flag_dir={self.flag_dir}: holds files app.py did not write (no flags.csv); "
                                      f"corrections go into a new or empty folder, or one app.py made")

    # -- the model's operating points -------------------------------------------------------
    @property
    def card(self):
        return self.backend.card

    def points(self) -> list[str]:
        return [OWN_POINT, *sorted(self.card.operating_points)]

    def use_point(self, name: str, batch: Batch | None = None) -> tuple[float, Batch | None]:
        """Read scores at the operating point ``name`` from now on; its threshold, and ``batch`` scored
        again at its temperature (a point's threshold means nothing on another temperature's scores)."""
        if name != self.point:
            with self._lock:
                self.backend = open_backend(self.cfg.ckpt, self.device, None if name == OWN_POINT else name)
                self.point = name
            if batch is not None:
                again = self.analyse(batch.scores.inputs.files, "photos" if batch.tiled else "patches")
                batch = Batch(again.folder, again.scores, batch.refused, again.threshold)
        return self.card.threshold, batch

    def consequences(self, threshold: float) -> dict | None:
        """What ``threshold`` implies on the split the point was fitted on (recall, precision, missed
        cracks, false alarms): validation for the model's own point, the site sample for a named one.
        None for a model whose card stores no scores (trained before they were stored)."""
        scores = self.card.operating_point.get("scores")
        if not scores:
            return None
        split = "validation split" if self.card.operating_point.get("split", "val") == "val" else "site sample"
        return {**at_threshold(scores, float(threshold)), "split": split, "point": self.point,
                "fitted": self.card.operating_point}

    # -- scoring ----------------------------------------------------------------------------
    def analyse(self, uploads: list[str | Path], mode: str = "auto") -> Batch:
        """Score the uploaded files (images, zips of images, folders); ``mode``: ``auto`` (whole
        photos when any image is over twice the model's patch on a side), ``photos`` or ``patches``."""
        k = next(self._count)
        folder = self.out / "batches" / f"{k:04d}"
        files, refused = self._files(uploads, folder / "unzipped")
        if not files:
            raise ValueError("nothing to score: " + ("; ".join(refused) if refused else
                             "upload images (JPEG, PNG, ...), a zip of images or a folder"))
        tile = mode == "photos" or (mode == "auto" and any(self._large(f) for f in files))
        settings = OmegaConf.create({"tile": tile, "num_workers": 0, **{  # no loader workers forked by a web server
            key: self.cfg[key] for key in ("tile_size", "tile_stride", "tile_mode", "tile_block_megapixels")}})
        with self._lock:  # one model, one forward pass at a time
            scores = predict.score(settings, self.backend, Inputs(files), folder,
                                   predict.resolve_batch_size(self.cfg.batch_size, self.device))
        return Batch(folder, scores, refused, self.card.threshold)

    def write(self, batch: Batch, threshold: float | None = None) -> dict:
        """``predictions.csv`` (and heatmaps) of ``batch`` at ``threshold`` (default: the model's)."""
        batch.threshold = self.card.threshold if threshold is None else float(threshold)
        heatmap = OmegaConf.to_container(self.cfg.heatmap) if batch.tiled else None
        return predict.write_predictions(batch.scores, self.backend, batch.threshold, batch.folder, heatmap)

    def _large(self, path: Path) -> bool:
        native = self.card.preprocessing.native_size
        try:
            with Image.open(path) as img:
                return img.height > 2 * native[0] or img.width > 2 * native[1]
        except Exception:  # noqa: BLE001 - unreadable: its row will say so
            return False

    def _files(self, uploads: list[str | Path], unzip_to: Path) -> tuple[list[Path], list[str]]:
        """The images to score, in upload order (a folder's and a zip's sorted), and what was refused.
        An explicit file is taken whatever it is -- an unreadable one gets a row saying why, as in
        ``predict.py`` -- unless its header claims more than ``max_pixels`` (not decoded at all)."""
        files, refused = [], []
        for upload in map(Path, uploads):
            if upload.is_dir():
                found = image_files(upload)
                files += found
                if not found:
                    refused.append(f"{upload.name}: the folder holds no images")
            elif zipfile.is_zipfile(upload):
                found, problem = self._unzip(upload, unzip_to / upload.stem)
                files += found
                if problem:
                    refused.append(problem)
            else:
                files.append(upload)
        kept = []
        for path in files:
            try:
                with open(path, "rb") as f:
                    problem = header_problem(f, 1, int(self.cfg.max_pixels))
            except OSError as err:
                problem = str(err)
            if problem:
                refused.append(f"{path.name}: {problem.replace('data.screening.max_pixels', 'max_pixels')}")
            else:
                kept.append(path)
        if len(kept) > int(self.cfg.max_files):
            refused.append(f"{len(kept) - int(self.cfg.max_files)} more image(s) than max_files={self.cfg.max_files} "
                           f"left out; score them in another batch, or with predict.py input=<folder>")
            kept = kept[: int(self.cfg.max_files)]
        return kept, refused

    def _unzip(self, archive: Path, into: Path) -> tuple[list[Path], str]:
        """The images of a zip, extracted under ``into`` by their names flattened (no member can
        write outside it), while their size stays within ``max_upload_mb``."""
        limit, total, out = int(self.cfg.max_upload_mb) * 2**20, 0, []
        try:
            with zipfile.ZipFile(archive) as zf:
                # what training would take as images; '..' is a system name too: no member reaches outside
                members = [m for m in zf.infolist() if not m.is_dir() and is_image_name(Path(m.filename).name)
                           and not any(is_system_name(part) for part in Path(m.filename).parts)]
                for m in members:
                    total += m.file_size
                    if total > limit:
                        return out, (f"{archive.name}: more than max_upload_mb={self.cfg.max_upload_mb} MB unpacked; "
                                     f"{len(out)} of {len(members)} image(s) taken")
                    target = into / m.filename.replace("/", "__").replace("\\", "__")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    out.append(target)
        except (zipfile.BadZipFile, OSError, RuntimeError) as err:  # RuntimeError: encrypted
            return out, f"{archive.name}: not a zip that can be read ({err})"
        return out, "" if members else f"{archive.name}: the zip holds no images"

    # -- the loop back to training ----------------------------------------------------------
    def flag(self, batch: Batch, index: int, label: str) -> Path:
        """Copy image ``index`` of ``batch`` into ``flag_dir/<label>/`` and record it in flags.csv.
        Its name carries a hash of its bytes: the same image flagged again replaces its earlier
        label (one image, one class), another image of the same name is kept beside it."""
        names = self.card.class_names
        if label not in names:
            raise ValueError(f"label {label!r}: not one of the model's classes {names}")
        source = batch.scores.inputs.files[index]
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:10]
        name = f"{source.stem}-{digest}{source.suffix.lower()}"
        manifest = self.flag_dir / "flags.csv"
        with self._lock:
            ours = {row["file"] for row in csv.DictReader(open(manifest, newline=""))} if manifest.exists() else set()
            for other in names:  # a correction of a correction: our copy moves, it is not in two classes
                if other != label and f"{other}/{name}" in ours and (self.flag_dir / other / name).exists():
                    (self.flag_dir / other / name).unlink()
            target = self.flag_dir / label / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            new = not manifest.exists()
            with open(manifest, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(FLAG_COLUMNS)
                writer.writerow([f"{label}/{name}", label, f"{batch.scores.probs[index]:.9g}",
                                 f"{batch.threshold:.9g}", self.backend.model_hash, str(source),
                                 time.strftime("%Y-%m-%dT%H:%M:%S")])
        log.info("Flagged %s as %s -> %s", source.name, label, target)
        return target

    def flagged(self) -> dict[str, int]:
        """Images in ``flag_dir`` per class."""
        return {name: len(list((self.flag_dir / name).glob("*"))) if (self.flag_dir / name).is_dir() else 0
                for name in self.card.class_names}
