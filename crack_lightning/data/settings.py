"""The data module's settings, one typed group per config node: ``data.split`` (with
``data.split.grouping``), ``data.screening``, ``data.cache`` and ``data.loader``.

Each group checks its own values when it is made and refuses a wrong one in one line
naming the full key; modes are enums (as anomalib's ``data/utils/split.py``). Torch-free,
so :func:`check_data` runs before torch is imported (``config_checks.check_config``); the
modules that use a group -- :mod:`.prepare`, :mod:`.quality.screening`,
:mod:`.quality.grouping`, :mod:`.decoded_cache`, :mod:`.datamodule` -- take it from here.

>>> SplitSettings.from_config({"strategy": "grouped", "fractions": [0.8, 0.1, 0.1]}).strategy
<SplitStrategy.GROUPED: 'grouped'>
>>> SplitSettings.from_config({"strategy": "grouped2"})
Traceback (most recent call last):
crack_lightning.CrackLightningError: data.split.strategy=grouped2: choose grouped, random or test.
>>> ScreeningSettings.from_config({"on_bad_file": "error"}).on_bad_file
<BadFilePolicy.ERROR: 'error'>
>>> CacheSettings.from_config({"enabled": "auto", "dir": "data/cache"}).used
True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from crack_lightning import CrackLightningError
from crack_lightning.utils.checks import (
    Auto, as_override, auto_or_bool, bad_setting, choice, is_count, is_number, settings_from, whole,
)


def moved(key: str, value) -> str | None:
    """``data.cache=false`` -> ``data.cache.enabled=false``: the new spelling of an old flat key."""
    new = MOVED.get(key)
    return f"{new}={as_override(value)}" if new else None


def check_fractions(fractions) -> tuple[float, float, float]:
    """``data.split.fractions`` (also the split functions' own guard, ``data/splits.py``)."""
    try:
        fractions = tuple(float(f) for f in fractions)
        ok = len(fractions) == 3 and all(f > 0 for f in fractions) and math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
    except (TypeError, ValueError):  # not a list of numbers
        ok = False
    if not ok:
        raise bad_setting("data.split.fractions", fractions,
                          "give three positive fractions [train, val, test] that sum to 1, e.g. [0.8, 0.1, 0.1]")
    return fractions


@dataclass
class GroupingSettings:
    """``data.split.grouping``: how patches are linked into groups.

    >>> GroupingSettings(ratio=0.5, phash_distance=4, bin=16).key_params()
    {'ratio': 0.5, 'phash_distance': 4, 'bin': 16}
    """

    KEY = "data.split.grouping"

    ratio: float = 0.5  # an edge match must beat the runner-up's distance by this factor
    phash_distance: int = 4  # near-duplicates: pHash bits apart (-1: none looked for)
    bin: int = 16  # edge profile: mean colour per run of this many pixels
    workers: int | None = None  # decoding processes; None: every core

    def __post_init__(self):
        if not (is_number(self.ratio) and 0 < self.ratio <= 1):
            raise bad_setting(f"{self.KEY}.ratio", self.ratio, "a number in (0, 1]")
        whole(f"{self.KEY}.phash_distance", self.phash_distance, minimum=-1, maximum=64)
        whole(f"{self.KEY}.bin", self.bin, minimum=1)
        if self.workers is not None:
            whole(f"{self.KEY}.workers", self.workers, minimum=1)

    def key_params(self) -> dict:
        """What the groups depend on (the cache key; ``workers`` changes no result)."""
        return {"ratio": self.ratio, "phash_distance": self.phash_distance, "bin": self.bin}


class SplitStrategy(str, Enum):
    """How images are dealt to train / val / test."""

    GROUPED = "grouped"  # patches that look cut from one photo stay in one split
    RANDOM = "random"  # per image, stratified by class
    TEST = "test"  # every image is test, grouped as GROUPED would be (evaluate.py, recalibrate.py)

    @property
    def grouped(self) -> bool:
        return self in (SplitStrategy.GROUPED, SplitStrategy.TEST)


@dataclass
class SplitSettings:
    """``data.split``: how the split is made, and where it is saved."""

    KEY = "data.split"

    strategy: SplitStrategy = SplitStrategy.RANDOM
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test; stratified by class
    seed: int | None = 0  # 0 is a seed like any other
    file: Path | None = None  # splits.csv; an existing one is reused as is (resume)
    grouping: GroupingSettings = field(default_factory=GroupingSettings)  # strategy grouped only
    # grouped by file name instead of by borders: a regex searched in the path under data.root whose
    # first group names the photo, e.g. SDNET2018's 7001-115.jpg -> 7001 with (\d+)-\d+\.\w+$
    group_pattern: str | None = None

    def __post_init__(self):
        self.strategy = choice(f"{self.KEY}.strategy", self.strategy, SplitStrategy)
        if self.group_pattern is not None:
            key = f"{self.KEY}.group_pattern"
            try:
                groups = re.compile(str(self.group_pattern)).groups
            except re.error as err:
                raise bad_setting(key, self.group_pattern, f"not a regular expression ({err})") from None
            if groups < 1:
                raise bad_setting(key, self.group_pattern, "needs a group ( ... ) that captures the photo id, "
                                                             "e.g. (\\d+)-\\d+\\.\\w+$")
            if not self.strategy.grouped:
                raise bad_setting(key, self.group_pattern, f"groups a split: set {self.KEY}.strategy=grouped too")
        self.fractions = check_fractions(self.fractions)
        if self.seed is not None:
            whole(f"{self.KEY}.seed", self.seed)
        self.file = Path(self.file).expanduser() if self.file else None
        self.grouping = settings_from(GroupingSettings, self.grouping, GroupingSettings.KEY)

    @classmethod
    def from_config(cls, node) -> "SplitSettings":
        return settings_from(cls, node, cls.KEY, MOVED.get(cls.KEY))

    @property
    def by_borders(self) -> bool:
        """Grouped by matching borders and near-duplicates (no ``group_pattern``)."""
        return self.strategy.grouped and self.group_pattern is None

    def photo_ids(self, relative_paths: list[str]) -> list[str]:
        """The photo id ``group_pattern`` finds in each path; one line naming the paths it misses."""
        pattern = re.compile(self.group_pattern)
        found = [pattern.search(p) for p in relative_paths]
        missed = [p for p, m in zip(relative_paths, found) if m is None or m.group(1) is None]
        if missed:
            raise CrackLightningError(
                f"{self.KEY}.group_pattern={self.group_pattern}: {len(missed)} of {len(relative_paths)} image "
                f"paths do not match it (e.g. {', '.join(missed[:3])}); every image needs its photo id. Fix the "
                f"pattern, or group by borders without it.")
        return [m.group(1) for m in found]


class BadFilePolicy(str, Enum):
    """What a run does with image files that fail the check."""

    SKIP = "skip"  # train without them (a warning; skipped_files.txt lists each with why)
    ERROR = "error"  # stop before training with the list


@dataclass
class ScreeningSettings:
    """``data.screening``: what an image must be to be trained on, and what bad ones do."""

    KEY = "data.screening"

    on_bad_file: BadFilePolicy = BadFilePolicy.SKIP
    min_side: int = 32  # smaller images are no crack patch (1x1 placeholders)
    max_pixels: int = 89_478_485  # larger headers are refused undecoded (decompression bombs); PIL's limit

    def __post_init__(self):
        self.on_bad_file = choice(f"{self.KEY}.on_bad_file", self.on_bad_file, BadFilePolicy)
        whole(f"{self.KEY}.min_side", self.min_side, minimum=1)
        whole(f"{self.KEY}.max_pixels", self.max_pixels, minimum=1)

    @classmethod
    def from_config(cls, node) -> "ScreeningSettings":
        return settings_from(cls, node, cls.KEY, MOVED.get(cls.KEY))


@dataclass
class CacheSettings:
    """``data.cache``: decode once into ``dir`` and serve batches from memory (or the device)."""

    KEY = "data.cache"

    enabled: bool | Auto = "auto"  # auto: whenever there is a dir
    dir: Path | None = None  # decoded images, image groups and image checks, keyed by the file list
    on_device: bool | Auto = "auto"  # auto: on a CUDA device with room for it (ResidentImages.fits)

    def __post_init__(self):
        self.enabled = auto_or_bool(f"{self.KEY}.enabled", self.enabled)
        self.on_device = auto_or_bool(f"{self.KEY}.on_device", self.on_device)
        self.dir = Path(self.dir).expanduser() if self.dir else None
        if self.enabled is True and self.dir is None:
            raise CrackLightningError(f"{self.KEY}.enabled=true needs {self.KEY}.dir (where the decoded images go).")

    @classmethod
    def from_config(cls, node) -> "CacheSettings":
        return settings_from(cls, node, cls.KEY, MOVED.get(cls.KEY))

    @property
    def used(self) -> bool:
        return self.dir is not None and self.enabled is not False


class Sampler(str, Enum):
    """How the training loader draws its images."""

    NONE = "none"  # each image once per epoch, shuffled
    BALANCED = "balanced"  # with replacement, every class equally often (imbalanced data)


@dataclass
class LoaderSettings:
    """``data.loader``: the DataLoaders' settings; ``auto`` picks for this machine."""

    KEY = "data.loader"

    batch_size: int = 32
    eval_batch_size: int | None = None  # None: batch_size
    num_workers: int | Auto = "auto"  # auto: cores - 1, at most 8; 0 with the decoded cache
    pin_memory: bool | Auto = "auto"  # auto: when CUDA is available
    persistent_workers: bool | Auto = "auto"  # auto: when there are workers
    sampler: Sampler = Sampler.NONE  # balanced: the training loader draws every class equally often

    def __post_init__(self):
        self.sampler = choice(f"{self.KEY}.sampler", self.sampler, Sampler)
        whole(f"{self.KEY}.batch_size", self.batch_size, minimum=1)
        if self.eval_batch_size is not None:
            whole(f"{self.KEY}.eval_batch_size", self.eval_batch_size, minimum=1)
        if self.num_workers != "auto" and not (is_count(self.num_workers) and self.num_workers >= 0):
            raise bad_setting(f"{self.KEY}.num_workers", self.num_workers, "auto or a whole number >= 0")
        self.pin_memory = auto_or_bool(f"{self.KEY}.pin_memory", self.pin_memory)
        self.persistent_workers = auto_or_bool(f"{self.KEY}.persistent_workers", self.persistent_workers)

    @classmethod
    def from_config(cls, node) -> "LoaderSettings":
        return settings_from(cls, node, cls.KEY, MOVED.get(cls.KEY))


# The flat keys of data/crack.yaml before the groups, and where each went: a user's old command
# line is told the new name (cli.entry for keys that are gone, settings_from for the group names).
MOVED = {
    "data.positive_class": "data.positive_classes",
    "data.split": "data.split.strategy", "data.split_fractions": "data.split.fractions",
    "data.split_seed": "data.split.seed", "data.split_file": "data.split.file", "data.grouping": "data.split.grouping",
    "data.on_bad_file": "data.screening.on_bad_file", "data.min_image_side": "data.screening.min_side",
    "data.max_image_pixels": "data.screening.max_pixels", "data.cache": "data.cache.enabled",
    "data.cache_dir": "data.cache.dir", "data.cache_on_device": "data.cache.on_device",
    **{f"data.{k}": f"data.loader.{k}"
       for k in ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers")},
}


def check_data(data) -> None:
    """Make every group of a ``data`` config node once, so a wrong value is refused before
    torch is imported (the data module makes them again, from the same node)."""
    SplitSettings.from_config(data.get("split"))
    ScreeningSettings.from_config(data.get("screening"))
    CacheSettings.from_config(data.get("cache"))
    LoaderSettings.from_config(data.get("loader"))
