"""The LightningDataModule: loaders, device batches and Lightning's hooks over a prepared dataset.

Everything before the loaders -- generate, screen, split, decode -- is
:mod:`~crack_lightning.data.prepare`; this module holds ``data.loader``
(:class:`LoaderSettings`) and what happens to a batch once it is on the device.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from crack_lightning.data.augmentation import BatchNormalize, FlipRotate, eval_transform
from crack_lightning.data.dataset import ImageListDataset
from crack_lightning.data.decoded_cache import DecodedImages, ResidentImages, collate_gathered
from crack_lightning.data.labelled import labelled_set
from crack_lightning.data.splits import read_split_rows
from crack_lightning.data.prepare import Preparation
from crack_lightning.data.sampling import ResumableSampler
from crack_lightning.data.settings import CacheSettings, LoaderSettings, Sampler, ScreeningSettings, SplitSettings
from crack_lightning.model_card import Preprocessing
from crack_lightning.trainer.distributed import eval_sampler
from crack_lightning.utils.parallel import auto_workers, available_cores

log = logging.getLogger(__name__)
# Lightning's warning on a mid-epoch checkpoint when the loader has no state_dict: ours resumes by its sampler
_NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"


class CrackDataModule(L.LightningDataModule):
    """Crack / no-crack images from an ImageFolder root.

    Args:
        root: folder with one sub-folder per class (default names Positive/ and Negative/).
        data_config: timm data config of the backbone (input size, interpolation, mean, std),
            from ``CrackClassifier.data_config``.
        augmentation: a :class:`~crack_lightning.data.augmentation.FlipRotate` (training
            randomness, per image or per batch); ``None`` trains on the evaluation transform.
        positive_classes: the crack class(es), a name or a list; inferred from common names
            (Positive/, crack/, ...) when ``None``. With more than two classes, the crack extras
            (operating threshold, missed cracks) read P(any of them).
        class_map: ``{folder under root: class name}`` for nested layouts (SDNET2018's ``D/CD``:
            the top folder becomes the image's domain); ``None``: the class folders of ``root``.
        manifest: a ``.csv`` / ``.parquet`` table (``path,label`` and optional ``group``,
            ``split``, ``domain``), instead of any folder layout (:mod:`~crack_lightning.data.labelled`).
        split: ``data.split``, a :class:`~crack_lightning.data.settings.SplitSettings` or its
            dict (``strategy`` random or grouped, ``fractions``, ``seed``, ``file``, ``grouping``).
        screening: ``data.screening``, a :class:`~crack_lightning.data.settings.ScreeningSettings`
            or its dict (``on_bad_file``, ``min_side``, ``max_pixels``).
        cache: ``data.cache``, a :class:`~crack_lightning.data.settings.CacheSettings` or its
            dict (``enabled``, ``dir``, ``on_device``).
        loader: ``data.loader``, a :class:`~crack_lightning.data.settings.LoaderSettings` or its dict.
        image_size: overrides the backbone's input size (int or [height, width]).
        synthetic: if set, ``prepare_data`` generates the synthetic dataset at ``root`` with
            these arguments (``per_class``, ``seed``) unless it is already there; a ``root``
            holding other data is trained on as it is, never written into.
        report_dir: where ``skipped_files.txt`` goes (the run folder); default: beside
            ``split.file``.
        model_classes: ``(class names, crack labels)`` of a trained model to label the images by
            (evaluate.py, recalibrate.py; see :class:`~crack_lightning.data.labelled.LabelledSet`).

    Example (``split.file`` is where ``splits.csv`` is written, or reused from)::

        dm = CrackDataModule("data/concrete_crack", model.data_config,
                             split={"strategy": "grouped", "file": "run/splits.csv"},
                             cache={"dir": "data/cache"}, loader={"batch_size": 64})
    """

    def __init__(
        self,
        root: str,
        data_config: dict,
        augmentation: FlipRotate | None = None,
        positive_classes: str | list[str] | None = None,
        class_map: dict | None = None,
        manifest: str | None = None,
        split: SplitSettings | dict | None = None,
        screening: ScreeningSettings | dict | None = None,
        cache: CacheSettings | dict | None = None,
        loader: LoaderSettings | dict | None = None,
        image_size: int | list[int] | None = None,
        synthetic: dict | None = None,
        report_dir: str | None = None,
        model_classes: tuple[list[str], list[int]] | None = None,
    ):
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        self.data_config = dict(data_config)
        if image_size is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            self.data_config["input_size"] = (3, int(h), int(w))
        self.augmentation = augmentation
        self.split = SplitSettings.from_config(split)
        self.cache = CacheSettings.from_config(cache)
        self.loader = loader = LoaderSettings.from_config(loader)
        self.batch_size = loader.batch_size
        self.eval_batch_size = loader.eval_batch_size or loader.batch_size
        # decoded images need no decoding workers: they would only compete for cores
        auto = 0 if self.cache.used else auto_workers()
        self.num_workers = auto if loader.num_workers == "auto" else loader.num_workers
        self.pin_memory = torch.cuda.is_available() if loader.pin_memory == "auto" else loader.pin_memory
        self.persistent_workers = (
            self.num_workers > 0 if loader.persistent_workers == "auto" else loader.persistent_workers
        )
        self.resident: ResidentImages | None = None
        self._resume_order: dict | None = None  # from a checkpoint (load_state_dict), for the next training loader
        report_dir = Path(report_dir) if report_dir else (self.split.file.parent if self.split.file else None)
        self.labelled = labelled_set(root, positive_classes, class_map, manifest, synthetic, model_classes)
        self.preparation = Preparation(
            self.labelled, self.data_config, self.split, ScreeningSettings.from_config(screening), self.cache, dict(synthetic) if synthetic else None, report_dir / "skipped_files.txt" if report_dir else None)
        self.class_names: list[str] = []
        self.positive: list[int] = []  # the crack classes' labels
        self.splits: dict | None = None

    @property
    def augments(self) -> bool:
        """Whether training images are augmented (randomly changed each epoch); ``augmentation=none``
        is not: a frozen backbone's features of them are then kept (models/feature_memo.py)."""
        # (an augmentation of one's own without ``random``: assume it is)
        return self.augmentation is not None and getattr(self.augmentation, "random", True)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.data_config["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.data_config["std"])

    def preprocessing(self) -> Preprocessing:
        """What prediction and export must repeat, saved in every checkpoint (the model card's
        part): the input size, interpolation, mean and std of :func:`eval_transform`, and the
        native [height, width] of the training images (the window of whole-photo prediction).
        Call after ``setup``."""
        from PIL import Image

        first = next((part[0] for part in (self.splits or {}).values() if part), None)
        patch_size = None
        if first is not None:
            with Image.open(first.path) as img:  # reads the header only
                patch_size = (img.height, img.width)
        return Preprocessing.from_timm_data_config(self.data_config, patch_size)

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class (label order) in ``split``; call after ``setup``."""
        labels = [s.label for s in self.splits[split]]
        return [labels.count(label) for label in range(len(self.class_names))]

    def split_groups(self, split: str = "test") -> list[str] | None:
        """The group (photo, manifest group) of each image of ``split``, in its order, as the saved
        ``splits.csv`` records them; ``None`` when the split has no groups. Call after ``setup``."""
        file = self.split.file
        if file is None or not file.is_file():
            return None
        rows = read_split_rows(file, self.labelled.root)
        group_of = {(self.labelled.root / r.path): r.group for r in rows}
        groups = [group_of.get(s.path) for s in self.splits[split]]
        return groups if all(g is not None for g in groups) else None

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: the image check and the (costly)
        # grouped split are made once, and every rank's setup() reads their files.
        self.preparation.prepare(workers=available_cores(), announce=self._is_first())

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:  # fit then test: keep the datasets already built
            return
        self.class_names, self.splits = self.preparation.load(announce=self._is_first())
        self.positive = self.labelled.classes()[1]
        augmentation = self.augmentation or FlipRotate(0.0, 0.0, 0.0)
        if self.cache.used:  # (a build here, without prepare_data, may use every core: nothing else runs yet)
            datasets = self.preparation.datasets(self.splits, available_cores())
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
        log.info("Classes %s (crack = %s); split sizes %s", self.class_names,
                 " + ".join(self.class_names[k] for k in self.positive), counts)

    def _is_first(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _place_cache(self, datasets: dict[str, DecodedImages]) -> None:
        """Keep the decoded cache on the training device for the run when asked to, or
        (``auto``) when it is a CUDA device with room for it; the loaders then carry row numbers."""
        device = self._device()
        resident = ResidentImages(datasets["train"].array)
        on = resident.fits(device) if self.cache.on_device == "auto" else self.cache.on_device
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

    def _loader(self, dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            # training: an order of (seed, epoch) that a mid-epoch resume continues, sharded across
            # DDP ranks; validation and test score each image once under DDP (no padding repeats)
            sampler=self._train_sampler(dataset) if train else eval_sampler(dataset),
            # a last batch of one image breaks BatchNorm in training
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_gathered if isinstance(dataset, DecodedImages) else None,
        )

    def _train_sampler(self, dataset) -> ResumableSampler:
        """A permutation per epoch, or (``sampler=balanced``) draws with replacement, each class
        equally likely; keyed per image where augmentation runs per image (the JPEG path)."""
        weights = None
        if self.loader.sampler is Sampler.BALANCED:
            counts = self.class_counts("train")
            weights = [1.0 / counts[s.label] for s in self.splits["train"]]
        sampler = ResumableSampler(len(dataset), weights, keyed=isinstance(dataset, ImageListDataset))
        if self._resume_order is not None:  # the loader of a resumed fit: where the checkpoint was
            sampler.set_epoch(self._resume_order["epoch"])
            sampler.start_at(self._resume_order["batches"] * self.batch_size)
            self._resume_order = None
        return sampler

    def state_dict(self) -> dict:
        """In every checkpoint: the epoch and the batches of it trained, so that a resumed fit
        draws the rest of the epoch in the same order (:mod:`~crack_lightning.data.sampling`).
        Lightning's own count of the loader would be a batch ahead (its fetcher has taken the
        next one); ``processed`` is the batches whose optimiser step is done."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if done >= trainer.num_training_batches:  # the end of an epoch: the next one from its start
            return {"train_order": {"epoch": trainer.current_epoch + 1, "batches": 0}}
        return {"train_order": {"epoch": trainer.current_epoch, "batches": done}}

    def load_state_dict(self, state_dict: dict) -> None:
        # called before the loaders are made (Lightning restores the data module first); and
        # before the epoch's first batch is drawn, which Lightning's fetcher does on making the
        # loader's iterator, before it sets the sampler's epoch: so both are set here
        self._resume_order = state_dict.get("train_order")
        if self._resume_order and self._resume_order["batches"]:
            warnings.filterwarnings("ignore", message=_NOT_RESUMABLE)  # it is resumed, by the sampler

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)
