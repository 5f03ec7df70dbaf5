"""The LightningDataModule: an ImageFolder root, a saved stratified split, loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from crack_lightning.data.augmentation import BatchNormalize, FlipRotate, eval_transform
from crack_lightning import CrackLightningError
from crack_lightning.data.quality import screening
from crack_lightning.data.dataset import ImageListDataset
from crack_lightning.data.imagefolder import resolve_class_names
from crack_lightning.data.decoded_cache import DecodedImages, ResidentImages, collate_gathered, for_splits, split_datasets
from crack_lightning.utils.parallel import auto_workers, available_cores
from crack_lightning.utils.files import atomic_path, files_key
from crack_lightning.trainer.distributed import eval_sampler
from crack_lightning.config_checks import check_fractions
from crack_lightning.data.splits import (
    check_support,
    grouped_split,
    read_split_info,
    read_splits,
    stratified_split,
    write_splits,
)

log = logging.getLogger(__name__)


class CrackDataModule(L.LightningDataModule):
    """Crack / no-crack images from an ImageFolder root.

    Args:
        root: folder with one sub-folder per class (default names Positive/ and Negative/).
        data_config: timm data config of the backbone (input size, interpolation, mean, std),
            from ``CrackClassifier.data_config``.
        augmentation: a :class:`~crack_lightning.data.augmentation.FlipRotate` (training
            randomness, per image or per batch); ``None`` trains on the evaluation transform.
        cache: decode every image once into a memory-mapped uint8 array in ``cache_dir``
            (:mod:`~crack_lightning.data.decoded_cache`) and augment whole batches on the
            device; ``"auto"``: on when ``cache_dir`` is set. ``False``: read JPEGs each epoch.
        cache_on_device: copy the whole decoded cache to the training device once and send
            only row numbers per batch (:class:`~crack_lightning.data.decoded_cache.ResidentImages`);
            ``"auto"``: on a CUDA device when the cache takes at most 40% of its free memory.
        positive_class: the crack folder's name; inferred from common names when ``None``.
        split: ``"random"`` (stratified by image) or ``"grouped"``: patches that look
            cut from the same photo (matching borders, near-duplicates; see
            :mod:`~crack_lightning.data.quality.grouping`) go to one split together.
        grouping: options of the grouped split (``ratio``, ``phash_distance``, ``bin``,
            ``workers``); groups are cached in ``cache_dir`` keyed by the file list.
        split_fractions: train/val/test fractions, stratified by class.
        split_seed: seed of the split (0 is a seed like any other).
        split_file: where ``splits.csv`` is written; an existing file is reused as is, which
            keeps the split of a resumed run.
        image_size: overrides the backbone's input size (int or [height, width]).
        num_workers / pin_memory / persistent_workers: ``"auto"`` picks for this machine.
        synthetic: if set, ``prepare_data`` generates the synthetic dataset at ``root`` with
            these arguments (``per_class``, ``seed``) unless it is already there; a ``root``
            holding other data is trained on as it is, never written into.
        on_bad_file: what to do with image files that fail the check before training
            (:mod:`~crack_lightning.data.quality.screening`: empty, truncated, not an image, too
            large or too small): ``"skip"`` them with a warning, or ``"error"``: stop.
        min_image_side / max_image_pixels: images smaller on a side, or whose header
            claims more pixels (decompression bombs), are bad files.
        report_dir: where ``skipped_files.txt`` goes (the run folder); default: beside
            ``split_file``.
    """

    def __init__(
        self,
        root: str,
        data_config: dict,
        augmentation: FlipRotate | None = None,
        positive_class: str | None = None,
        split: str = "random",
        grouping: dict | None = None,
        cache_dir: str | None = None,
        split_fractions=(0.8, 0.1, 0.1),
        split_seed: int = 0,
        split_file: str | None = None,
        image_size: int | list[int] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        persistent_workers: bool | str = "auto",
        synthetic: dict | None = None,
        cache: bool | str = "auto",
        cache_on_device: bool | str = "auto",
        on_bad_file: str = "skip",
        min_image_side: int = 32,
        max_image_pixels: int = 89_478_485,
        report_dir: str | None = None,
    ):
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        self.data_config = dict(data_config)
        if image_size is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            self.data_config["input_size"] = (3, int(h), int(w))
        self.augmentation = augmentation
        self.positive_class = positive_class
        if split not in ("random", "grouped"):
            raise CrackLightningError(f"data.split={split}: choose random or grouped.")
        self.split = split
        self.grouping = dict(grouping or {})
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.split_fractions = check_fractions(split_fractions)
        self.split_seed = split_seed
        self.split_file = Path(split_file) if split_file else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.cache = bool(cache_dir) if cache == "auto" else bool(cache)
        if self.cache and not cache_dir:
            raise CrackLightningError("data.cache=true needs data.cache_dir (where the decoded images go).")
        # decoded images need no decoding workers: they would only compete for cores
        self.num_workers = (0 if self.cache else auto_workers()) if num_workers == "auto" else int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.persistent_workers = (
            self.num_workers > 0 if persistent_workers == "auto" else bool(persistent_workers)
        )
        self.cache_on_device = cache_on_device
        self.resident: ResidentImages | None = None
        self.synthetic = dict(synthetic) if synthetic else None
        self.on_bad_file = screening.check_policy(on_bad_file)
        self.screen_options = {"min_side": int(min_image_side), "max_pixels": int(max_image_pixels)}
        report_dir = Path(report_dir) if report_dir else (self.split_file.parent if self.split_file else None)
        self.skipped_file = report_dir / "skipped_files.txt" if report_dir else None
        self._screening: screening.Screening | None = None
        self.class_names: list[str] = []
        self.splits: dict | None = None

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.data_config["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.data_config["std"])

    def preprocessing(self) -> dict:
        """What prediction and export must repeat, saved in every checkpoint: the input
        size, interpolation, mean and std of :func:`eval_transform`, and ``patch_size``,
        the native [height, width] of the training images (the window of whole-photo
        prediction). Call after ``setup``."""
        from PIL import Image

        first = next((part[0] for part in (self.splits or {}).values() if part), None)
        patch_size = None
        if first is not None:
            with Image.open(first.path) as img:  # reads the header only
                patch_size = [img.height, img.width]
        return {
            "input_size": [int(v) for v in self.data_config["input_size"][-2:]],
            "interpolation": self.data_config.get("interpolation", "bilinear"),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "patch_size": patch_size,
        }

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            self._generate_synthetic()
        # Lightning calls this on one process per node: the image check and the (costly)
        # grouped split are made once, and every rank's setup() reads their files.
        class_names = resolve_class_names(self.root, self.positive_class)
        samples = self._usable(class_names)  # stops here, before training, with on_bad_file=error
        if self.split_file is None:
            return
        if not self.split_file.is_file():
            splits = self._new_split(class_names, samples, save=True)
        elif self.cache:
            splits = self._saved_split(class_names, announce=False)  # setup() warns
        if self.cache:  # decode once here too, so DDP ranks do not all build the same cache
            for_splits(splits, self.cache_dir, self.data_config, workers=available_cores())

    def _generate_synthetic(self) -> None:
        """``data.synthetic``: fill ``root`` with the synthetic set, unless it holds other data --
        then that is what the recipe trains on (``experiment=demo data.root=<your data>``)."""
        from crack_lightning.data.synthetic.generate import NotGeneratedHere, generate

        try:
            generate(self.root, **self.synthetic)
        except NotGeneratedHere:
            log.warning("data.root=%s holds data the synthetic generator did not write: training on it as it "
                        "is (data.synthetic only fills a new or empty folder, or one it generated)", self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:  # fit then test: keep the datasets already built
            return
        self.class_names = resolve_class_names(self.root, self.positive_class)
        samples = self._usable(self.class_names)  # from the cache prepare_data filled, on every rank
        if self.split_file is not None and self.split_file.is_file():
            self._check_saved_strategy()
            log.info("Reusing the saved split %s", self.split_file)
            self.splits = self._saved_split(self.class_names, announce=self._is_first())
        else:  # prepare_data was not called (plain use outside a Trainer)
            self.splits = self._new_split(self.class_names, samples, save=self._is_first())
        augmentation = self.augmentation or FlipRotate(0.0, 0.0, 0.0)
        if self.cache:  # (a build here, without prepare_data, may use every core: nothing else runs yet)
            datasets = split_datasets(self.splits, self.cache_dir, self.data_config, available_cores())
            self._place_cache(datasets)
            self.train_dataset, self.val_dataset, self.test_dataset = (datasets[k] for k in ("train", "val", "test"))
            self.batch_transforms = {
                "train": augmentation.batch(self.data_config),
                "eval": BatchNormalize(self.data_config["mean"], self.data_config["std"]),
            }
        else:
            eval_tf = eval_transform(self.data_config)
            self.train_dataset = ImageListDataset(self.splits["train"], augmentation.pil(self.data_config))
            self.val_dataset = ImageListDataset(self.splits["val"], eval_tf)
            self.test_dataset = ImageListDataset(self.splits["test"], eval_tf)
        counts = {k: len(v) for k, v in self.splits.items()}
        log.info("Classes %s (crack = %s); split sizes %s", self.class_names, self.class_names[1], counts)

    def _is_first(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _usable(self, class_names: list[str]) -> list:
        """The samples that passed the image check (:mod:`~crack_lightning.data.quality.screening`),
        cached in ``cache_dir``; the first call in a process reports the others."""
        announce = self._screening is None and self._is_first()
        if self._screening is None:
            self._screening = screening.screen(self.root, class_names, self.cache_dir, **self.screen_options)
        return screening.apply(self._screening, class_names, self.on_bad_file, self.skipped_file, announce)

    def _saved_split(self, class_names: list[str], announce: bool) -> dict:
        """The saved split, less the files that are bad now (or stop, with on_bad_file=error)."""
        splits = read_splits(self.split_file, self.root, class_names)
        splits = screening.drop_unusable(splits, self._screening, self.on_bad_file, self.split_file, announce)
        check_support(splits, class_names, self.root)
        return splits

    def _place_cache(self, datasets: dict[str, DecodedImages]) -> None:
        """Keep the decoded cache on the training device for the run when asked to, or
        (``auto``) when it is a CUDA device with room for it; the loaders then carry row numbers."""
        device = self._device()
        resident = ResidentImages(datasets["train"].array)
        on = resident.fits(device) if self.cache_on_device == "auto" else bool(self.cache_on_device)
        self.resident = resident if on else None
        for dataset in datasets.values():
            dataset.serve_rows = on
        if on:
            log.info("The decoded images (%.1f GiB) go to %s once; batches carry row numbers",
                     resident.array.nbytes / 2**30, device)

    def release_device_cache(self) -> None:
        """Drop the device copy of the cache; the loaders serve pixels again. Called at the
        end of a run: the data module and the trainer refer to each other, so without it
        the copy (6 GB for 40k images at 224 px) stays in GPU memory until Python's cycle
        collector runs -- possibly into the next job of a sweep."""
        if self.resident is not None:
            self.resident = None
            for dataset in (self.train_dataset, self.val_dataset, self.test_dataset):
                dataset.serve_rows = False

    def _device(self) -> torch.device:
        """Where batches will go: the trainer's device; without a trainer, CUDA if there is one."""
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        return self.device_batch(batch, training)

    def device_batch(self, batch, training: bool):
        """A loader batch on its device, as the model takes it. Row numbers become images
        of the resident cache; decoded uint8 (N, H, W, 3) images are augmented (training) or
        normalised here, on the device, as one channels-last float batch; JPEG-path
        batches are ready already."""
        images, labels = batch
        if self.resident is not None and images.dtype == torch.int64 and images.dim() == 1:
            images = self.resident(images)
        if images.dtype == torch.uint8 and images.dim() == 4 and images.shape[-1] == 3:
            transform = self.batch_transforms["train" if training else "eval"].to(images.device)
            images = transform(images.permute(0, 3, 1, 2))
        return images, labels

    def preview_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Training images ``indices`` as the model sees them (augmented, normalised)."""
        samples = [self.train_dataset[i] for i in indices]
        images = torch.stack([img for img, _ in samples])
        if images.dtype == torch.uint8:
            images = self.batch_transforms["train"](images.permute(0, 3, 1, 2))
        return images, [label for _, label in samples]

    def _new_split(self, class_names: list[str], samples: list, save: bool) -> dict:
        info = {"strategy": self.split, "seed": self.split_seed, "fractions": list(self.split_fractions)}
        groups = None
        if self.split == "grouped":
            labels = self._groups(samples)
            groups = {s.path: int(g) for s, g in zip(samples, labels)}
            splits = grouped_split(samples, labels, self.split_fractions, self.split_seed)
            info.update(groups=int(labels.max()) + 1, grouping=self.grouping)
        else:
            splits = stratified_split(samples, self.split_fractions, self.split_seed)
        check_support(splits, class_names, self.root)
        if save and self.split_file is not None:
            write_splits(self.split_file, splits, self.root, class_names, info, groups)
            log.info("Made a %s split -> %s", self.split, self.split_file)
        return splits

    def _groups(self, samples):
        """Group index per sample, from the cache when the files have not changed."""
        import numpy as np

        from crack_lightning.data.quality.grouping import group_files

        paths = [s.path for s in samples]
        options = {k: v for k, v in self.grouping.items() if k != "workers"}
        cache = None
        if self.cache_dir is not None:
            cache = self.cache_dir / f"groups-{files_key(paths, **options)}.npy"
            if cache.is_file():
                log.info("Reusing image groups from %s", cache)
                return np.load(cache)
        log.info("Grouping %d images by matching borders and near-duplicates ...", len(paths))
        labels = group_files(paths, **self.grouping)
        if cache is not None:
            with atomic_path(cache) as tmp:
                np.save(tmp, labels)
        return labels

    def _check_saved_strategy(self) -> None:
        info = read_split_info(self.split_file)
        made_by = info.get("strategy") if info else None
        if made_by is not None and made_by != self.split:
            raise CrackLightningError(
                f"{self.split_file} was made by data.split={made_by}, but this run asks for "
                f"data.split={self.split}. Set data.split={made_by} to reuse it, or delete it "
                f"(and {self.split_file.with_suffix('.json').name}) to make a new split."
            )

    def _loader(self, dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            # under DDP, validation and test score each image once (no padding repeats)
            sampler=None if train else eval_sampler(dataset),
            # a last batch of one image breaks BatchNorm in training
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_gathered if isinstance(dataset, DecodedImages) else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)
