"""Decode the dataset once into a memory-mapped uint8 array; serve images from it.

40,000 patches at 224x224 are 6 GB as uint8: they fit in RAM (and in a GPU),
so no epoch needs to decode a JPEG again.  The cache holds every image of the
dataset already resized to the model's input size (the same resize as the JPEG
path, so pixels are identical), as ``(N, H, W, 3)`` uint8 in a ``.npy`` file
that is memory-mapped: the OS page cache shares it between processes and runs.

It is keyed by the file list, sizes and mtimes plus the size and interpolation,
so a changed dataset builds a new one.  It is written to a temporary file and
renamed when complete: a killed build never leaves a cache that looks valid.

The data module only hands it files that passed the screening
(:mod:`~crack_lightning.data.quality.screening`); a decode failure here means a file
changed since, and still stops the build with the list rather than store zeros.

Whether it is used, where it lives and whether it goes to the device is
``data.cache`` (:class:`~crack_lightning.data.settings.CacheSettings`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from crack_lightning import CrackLightningError
from crack_lightning.utils.parallel import parallel_map
from crack_lightning.utils.files import atomic_path, files_key, remove_stale_partials

log = logging.getLogger(__name__)

VERSION = 2  # bump when the stored pixels would change for the same inputs (2: to_rgb scales 16-bit, composites alpha)


def _decode_rows(job) -> list[tuple[str, str]]:
    """Worker: decode ``paths`` into rows ``start...`` of the array at ``file``; return failures."""
    file, start, paths, size, interpolation = job
    from crack_lightning.data.augmentation import to_resized_image
    from crack_lightning.data.dataset import to_rgb

    resize = to_resized_image({"input_size": (3, *size), "interpolation": interpolation})
    array = np.load(file, mmap_mode="r+")
    failed = []
    for k, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                array[start + k] = resize(to_rgb(img)).permute(1, 2, 0).numpy()
        except Exception as err:  # noqa: BLE001 -- reported together, by file
            failed.append((str(path), f"{type(err).__name__}: {err}"))
    array.flush()
    return failed


def build(paths: list[Path], file: Path, size: tuple[int, int], interpolation: str, workers: int = 1) -> None:
    """Decode ``paths`` into ``file`` (atomically: a temporary file renamed at the end)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_partials(file.parent):  # a killed build's half array: GBs, in our cache only
        log.info("Removed %s, left by a killed process", stale)
    need = len(paths) * size[0] * size[1] * 3
    free = shutil.disk_usage(file.parent).free
    if need > free:
        raise CrackLightningError(
            f"The decoded cache needs {need / 2**30:.1f} GiB in {file.parent} but {free / 2**30:.1f} GiB "
            f"are free. Free space, point data.cache.dir elsewhere, or set data.cache.enabled=false.")
    with atomic_path(file) as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *size, 3)).flush()
        step = max(1, min(512, len(paths) // max(1, 4 * workers)))
        jobs = [(str(tmp), s, [str(p) for p in paths[s:s + step]], tuple(size), interpolation)
                for s in range(0, len(paths), step)]
        failed = [f for part in parallel_map(_decode_rows, jobs, workers, chunk=1) for f in part]
        if failed:
            shown = "; ".join(f"{p} ({e})" for p, e in failed[:5])
            raise CrackLightningError(
                f"{len(failed)} image(s) could not be decoded: {shown}. Remove or replace them "
                f"(`make validate ROOT=<data.root>` lists every problem), then rerun.")


def load_or_build(paths: list[Path], cache_dir: Path, size: tuple[int, int], interpolation: str,
                  workers: int = 1) -> np.ndarray:
    """The decoded images of ``paths`` in that order, building the cache if needed."""
    key = files_key(paths, size=tuple(size), interpolation=interpolation, version=VERSION)
    file = Path(cache_dir) / f"decoded-{size[0]}x{size[1]}-{key}.npy"
    if not file.is_file():
        log.info("Decoding %d images once into %s (%.1f GiB) ...", len(paths), file,
                 len(paths) * size[0] * size[1] * 3 / 2**30)
        build(paths, file, size, interpolation, workers)
    else:
        log.info("Reusing the decoded images in %s", file)
    array = np.load(file, mmap_mode="r")
    if array.shape != (len(paths), *size, 3):  # another writer's file under our key: never trust it
        raise CrackLightningError(f"{file} has shape {array.shape}, expected {(len(paths), *size, 3)}; delete it.")
    return array


def for_splits(splits: dict, cache_dir: Path, data_config: dict, workers: int = 1) -> tuple[np.ndarray, dict]:
    """The decoded images of every file in ``splits`` in sorted path order, built if
    needed, and each file's row.  The order does not depend on the split, so every
    split and seed of a dataset shares one cache."""
    paths = sorted(s.path for part in splits.values() for s in part)
    size = tuple(data_config["input_size"][-2:])
    array = load_or_build(paths, cache_dir, size, data_config.get("interpolation", "bilinear"), workers=workers)
    return array, {path: row for row, path in enumerate(paths)}


def split_datasets(splits: dict, cache_dir: Path, data_config: dict, workers: int = 1) -> dict[str, "DecodedImages"]:
    """One :class:`DecodedImages` per split, all reading the one cache."""
    array, row_of = for_splits(splits, cache_dir, data_config, workers)
    return {name: DecodedImages(array, [row_of[s.path] for s in part], [s.label for s in part])
            for name, part in splits.items()}


class DecodedImages(Dataset):
    """Images from the decoded cache: ``(uint8 (H, W, 3) tensor, label)``.

    A loader gets whole batches from :meth:`__getitems__` -- one gather from the array,
    ``(uint8 (N, H, W, 3), int64 (N,))``; collate them with :func:`collate_gathered`.
    ``permute(0, 3, 1, 2)`` makes them NCHW in the channels-last layout without a copy.
    Augmentation and normalisation run per batch after the transfer to the device
    (:meth:`CrackDataModule.on_after_batch_transfer`).

    ``serve_rows``: batches carry the cache's row numbers, ``int64 (N,)``, in place of
    pixels, for a cache that already sits on the device
    (:class:`ResidentImages`): nothing but indices crosses to the GPU.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, labels: list[int], serve_rows: bool = False):
        self.array, self.rows, self.labels = array, np.asarray(rows), list(labels)
        self._label_array = torch.as_tensor(self.labels, dtype=torch.int64)
        self.serve_rows = serve_rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.array[self.rows[index]])), self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # One fancy-index gather instead of a Python call and a copy per image, then a
        # stack: the per-image path is ~10x slower and, serial with the training step,
        # would bound a GPU fine-tune (`make bench`'s loader column measures this one).
        indices = np.asarray(indices)
        rows = self.rows[indices]
        images = torch.from_numpy(rows) if self.serve_rows else torch.from_numpy(self.array[rows])
        return images, self._label_array[torch.from_numpy(indices)]


def collate_gathered(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``collate_fn`` for :class:`DecodedImages`: its batches come ready-made."""
    return batch


class ResidentImages:
    """The whole decoded cache on one device, uploaded once; batches of row numbers
    become batches of images there (a gather on the GPU instead of a host copy, a
    pinned staging copy and a transfer per batch)."""

    CHUNK = 2048  # rows per upload: the host never holds more than this in extra memory

    def __init__(self, array: np.ndarray):
        self.array = array
        self._copy: torch.Tensor | None = None

    def fits(self, device: torch.device, share: float = 0.4) -> bool:
        """Whether the cache takes at most ``share`` of ``device``'s free memory (CUDA only)."""
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return self.array.nbytes <= share * free

    def tensor_on(self, device: torch.device) -> torch.Tensor:
        """The whole cache as a uint8 tensor on ``device``, uploaded on the first call."""
        if self._copy is None or self._copy.device != device:
            self._copy = None  # release a copy on another device first
            log.info("Copying the decoded images to %s (%.1f GiB) ...", device, self.array.nbytes / 2**30)
            resident = torch.empty(self.array.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(self.array), self.CHUNK):
                chunk = np.array(self.array[start:start + self.CHUNK])  # writable: torch shares it
                resident[start:start + len(chunk)].copy_(torch.from_numpy(chunk))
            self._copy = resident
        return self._copy

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tensor_on(rows.device)[rows]
