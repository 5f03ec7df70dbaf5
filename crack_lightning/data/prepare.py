"""Make a dataset ready for training: generate -> screen -> split -> decode.

:class:`Preparation` runs, for :class:`~crack_lightning.data.datamodule.CrackDataModule`,
every step before the loaders:

1. **generate** (``data.synthetic``): fill ``root`` with the synthetic set, only when it
   is new, empty or the generator's own;
2. **screen** (``data.screening``, :mod:`~crack_lightning.data.quality.screening`): every
   image file checked once, the bad ones skipped or the run stopped;
3. **split** (``data.split``, :class:`~crack_lightning.data.settings.SplitSettings`): a saved ``splits.csv`` is reused,
   else a grouped (:mod:`~crack_lightning.data.quality.grouping`) or random split is made
   and saved;
4. **decode** (``data.cache``, :mod:`~crack_lightning.data.decoded_cache`): every image
   once into the memory-mapped cache.

A first grouped run decodes each image once for steps 2 and 3 together: the check keeps
its fingerprints with the border profiles, and the grouping reads them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from crack_lightning import CrackLightningError
from crack_lightning.data import decoded_cache
from crack_lightning.data.decoded_cache import DecodedImages
from crack_lightning.data.imagefolder import Sample
from crack_lightning.data.labelled import LabelledSet
from crack_lightning.data.quality import grouping, screening
from crack_lightning.data.settings import CacheSettings, ScreeningSettings, SplitSettings, SplitStrategy
from crack_lightning.data.splits import (
    check_support,
    grouped_split,
    read_split_info,
    read_splits,
    stratified_split,
    write_splits,
)
from crack_lightning.utils.files import atomic_path, files_key

log = logging.getLogger(__name__)


class Preparation:
    """The preparation of one dataset in one process. ``prepare_data`` runs :meth:`prepare`
    (once per node); every rank's ``setup`` runs :meth:`load`, which reads what it saved."""

    def __init__(self, labelled: LabelledSet, data_config: dict, split: SplitSettings,
                 screening_settings: ScreeningSettings, cache: CacheSettings, synthetic: dict | None = None,
                 report: Path | None = None):
        self.labelled, self.root, self.data_config = labelled, labelled.root, data_config
        self.split, self.screening, self.cache = split, screening_settings, cache
        self.synthetic = synthetic
        self.report = report  # skipped_files.txt
        self.screened: screening.Screening | None = None
        self.given_groups: dict[Path, str] | None = None  # a manifest's group column
        self.given_splits: dict[Path, str] | None = None  # a manifest's split column

    def prepare(self, workers: int, announce: bool = True) -> None:
        """Every step, saving what ``load`` reads: image checks, groups, split, decoded cache."""
        if self.synthetic is not None:
            self.generate()
        class_names, _ = self.labelled.classes()
        samples = self.usable(class_names, announce)  # stops here, before training, with on_bad_file=error
        if self.split.file is None:
            return
        if not self.split.file.is_file():
            splits = self.new_split(class_names, samples, save=announce)  # written by global rank 0 only
        elif self.cache.used:
            splits = self.saved_split(class_names, announce=False)  # load() warns
        if self.cache.used:  # decode once here too, so DDP ranks do not all build the same cache
            decoded_cache.for_splits(splits, self.cache.dir, self.data_config, workers=workers)

    def load(self, announce: bool) -> tuple[list[str], dict[str, list[Sample]]]:
        """The class names and the split: the saved one, else a new one (saved when ``announce``)."""
        class_names, _ = self.labelled.classes()
        samples = self.usable(class_names, announce)  # from the cache prepare() filled, on every rank
        if self.split.file is not None and self.split.file.is_file():
            self.check_saved_strategy()
            log.info("Reusing the saved split %s", self.split.file)
            return class_names, self.saved_split(class_names, announce)
        return class_names, self.new_split(class_names, samples, save=announce)  # prepare() was not called

    def datasets(self, splits: dict[str, list[Sample]], workers: int) -> dict[str, DecodedImages]:
        """One dataset per split over the decoded cache (built here if prepare() did not)."""
        return decoded_cache.split_datasets(splits, self.cache.dir, self.data_config, workers)

    def generate(self) -> None:
        """``data.synthetic``: fill ``root`` with the synthetic set, unless it holds other data --
        then that is what the recipe trains on (``experiment=demo data.root=<your data>``)."""
        from crack_lightning.data.synthetic.generate import NotGeneratedHere, generate

        try:
            generate(self.root, **self.synthetic)
        except NotGeneratedHere:
            log.warning("data.root=%s holds data the synthetic generator did not write: training on it as it "
                        "is (data.synthetic only fills a new or empty folder, or one it generated)", self.root)

    def usable(self, class_names: list[str], announce: bool) -> list[Sample]:
        """The samples that passed the image check, cached in ``cache.dir``; the first call
        in a process reports the others (when ``announce``)."""
        first = self.screened is None
        if first:
            scanned = self.labelled.scan(class_names)
            self.given_groups, self.given_splits = scanned.groups, scanned.splits
            # a grouped split reads the check's decode: border profiles computed in the same pass
            # (not when a manifest's group or split column says already)
            grouped = self.split.by_borders and scanned.groups is None and scanned.splits is None
            extra = grouping.border_extra(self.split.grouping) if grouped else None
            workers = self.split.grouping.workers if grouped else None
            self.screened = screening.screen(scanned, self.cache.dir, self.screening, workers, extra)
        return screening.apply_bad_file_policy(self.screened, class_names, self.screening.on_bad_file,
                                               self.report, announce and first)

    def saved_split(self, class_names: list[str], announce: bool) -> dict[str, list[Sample]]:
        """The saved split, less the files that are bad now (or stop, with on_bad_file=error)."""
        self.screened.fingerprints.clear()  # no grouping to make
        splits = read_splits(self.split.file, self.root, class_names)
        splits = screening.drop_unusable(splits, self.screened, self.screening.on_bad_file, self.split.file, announce)
        check_support(splits, class_names, self.labelled.where, self.split.strategy is SplitStrategy.TEST)
        return splits

    @property
    def strategy(self) -> str:
        """How the split is made: ``data.split.strategy``, or ``manifest`` when its split column says."""
        if self.given_splits and self.split.strategy is not SplitStrategy.TEST:
            return "manifest"
        return self.split.strategy.value

    def new_split(self, class_names: list[str], samples: list[Sample], save: bool) -> dict[str, list[Sample]]:
        split = self.split
        info = {"strategy": self.strategy, "seed": split.seed, "fractions": list(split.fractions)}
        groups = None
        if split.strategy is SplitStrategy.TEST:  # every image (a manifest's split column aside), in its groups
            labels = self.groups(samples)
            groups = {s.path: int(g) for s, g in zip(samples, labels)}
            splits = {"train": [], "val": [], "test": list(samples)}
            info = {"strategy": self.strategy, "groups": int(labels.max()) + 1 if len(labels) else 0}
        elif self.given_splits:  # the manifest's own split, as it is
            splits = {name: [s for s in samples if self.given_splits[s.path] == name] for name in ("train", "val", "test")}
            info = {"strategy": self.strategy}
        elif split.strategy is SplitStrategy.GROUPED:
            labels = self.groups(samples)
            groups = {s.path: int(g) for s, g in zip(samples, labels)}
            splits = grouped_split(samples, labels, split.fractions, split.seed)
            how = ({"column": "group"} if self.given_groups else {"pattern": split.group_pattern}
                   if split.group_pattern else dataclasses.asdict(split.grouping))
            info.update(groups=int(labels.max()) + 1, grouping=how)
        else:
            splits = stratified_split(samples, split.fractions, split.seed)
        _, positive = self.labelled.classes()
        check_support(splits, class_names, self.labelled.where, self.split.strategy is SplitStrategy.TEST)
        if save and split.file is not None:
            write_splits(split.file, splits, self.root, class_names, info, groups, positive)
            log.info("Made a %s split -> %s", self.strategy, split.file)
        return splits

    def groups(self, samples: list[Sample]) -> np.ndarray:
        """Group index per sample, from the cache when the files have not changed."""
        paths = [s.path for s in samples]
        if self.given_groups:  # the manifest's group column: replaces border matching
            labels = np.unique([self.given_groups.get(p, f"/{p}") for p in paths], return_inverse=True)[1]
            log.info("Grouped %d images into %d groups by the manifest's group column", len(paths), labels.max() + 1)
            return labels
        if self.split.group_pattern:  # the photo id in each file name: nothing to decode or cache
            ids = self.split.photo_ids([p.relative_to(self.root).as_posix() for p in paths])
            labels = np.unique(ids, return_inverse=True)[1]
            log.info("Grouped %d images into %d photos by data.split.group_pattern", len(paths), labels.max() + 1)
            return labels
        settings = self.split.grouping
        prints = [self.screened.fingerprints.get(p) for p in paths]
        self.screened.fingerprints.clear()  # ~1 KB per image: not kept for the run
        cache = None
        if self.cache.dir is not None:
            cache = self.cache.dir / f"groups-{files_key(paths, **settings.key_params())}.npy"
            if cache.is_file():
                log.info("Reusing image groups from %s", cache)
                return np.load(cache)
        log.info("Grouping %d images by matching borders and near-duplicates ...", len(paths))
        shared = all(fp is not None for fp in prints)  # else the verdicts came from the cache: decode here
        labels = grouping.group_files(paths, settings, prints if shared else None)
        if cache is not None:
            with atomic_path(cache) as tmp:
                np.save(tmp, labels)
        return labels

    def check_saved_strategy(self) -> None:
        info = read_split_info(self.split.file)
        made_by = info.get("strategy") if info else None
        asked = self.strategy
        if made_by is not None and made_by != asked:
            key = f"{SplitSettings.KEY}.strategy"
            raise CrackLightningError(
                f"{self.split.file} was made by {key}={made_by}, but this run asks for {key}={asked}. Set "
                f"{key}={made_by} to reuse it, or delete it (and {self.split.file.with_suffix('.json').name}) "
                f"to make a new split.")
