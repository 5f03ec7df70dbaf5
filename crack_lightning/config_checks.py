"""Types and ranges of the settings people override most, checked before any data or
weights are touched: ``model.lr=abc`` should be one line naming the key, not a
traceback from deep inside the optimizer after the dataset was split and decoded.

Hydra itself already refuses unknown keys (``Key 'max_epoch' is not in struct``).
The ``data`` groups (``data.split``, ``data.screening``, ``data.cache``, ``data.loader``)
are typed settings of the modules that use them and check themselves when the data
module is built, with the helpers at the end of this module; this one keeps the rules
that span groups.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, Callable, Literal, TypeVar

from omegaconf import DictConfig, OmegaConf

from crack_lightning import CrackLightningError

NUMBER = "a number"
COUNT = "a whole number"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# key -> (what the value must be, the test); None passes where the key is optional.
RULES: dict[str, tuple[str, Callable[[Any], bool], bool]] = {
    "seed": (COUNT, is_count, True),
    "model.lr": ("a number > 0", lambda v: is_number(v) and v > 0, False),
    "model.drop_rate": ("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1, False),
    "model.label_smoothing": ("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1, False),
    "data.image_size": ("a whole number >= 8 or [height, width]", lambda v: (
        (is_count(v) and v >= 8) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(is_count(x) and x >= 8 for x in v))
    ), True),
    "trainer.max_epochs": ("a whole number >= 1 (or -1: no limit)", lambda v: is_count(v) and (v >= 1 or v == -1), True),
    "trainer.min_epochs": ("a whole number >= 0", lambda v: is_count(v) and v >= 0, True),
    "finetune.unfreeze_at_epoch": ("a whole number >= 0", lambda v: is_count(v) and v >= 0, True),
    "finetune.unfreeze_stages": ("null (the whole backbone) or a whole number >= 1", lambda v: is_count(v) and v >= 1, True),
    # best checkpoint, early stopping and the operating point all come from validation
    "trainer.limit_val_batches": ("a number > 0: the run needs validation (best checkpoint, early stopping, "
                                  "operating point)", lambda v: is_number(v) and v > 0, True),
    "finetune.backbone_lr_ratio": ("a number >= 0", lambda v: is_number(v) and v >= 0, True),
    "eval.target_recall": ("a number in (0, 1]", lambda v: is_number(v) and 0 < v <= 1, True),
    "trainer.compile": ("false, true or inference", lambda v: v is False or v is True or v == "inference", True),
}


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


def check_types(cfg: DictConfig, rules: dict = RULES) -> None:
    """Raise one :class:`CrackLightningError` listing every setting of ``rules`` whose
    value has the wrong type or range (keys absent from ``cfg`` are skipped)."""
    problems = []
    for key, (expected, ok, optional) in rules.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True)["v"]
        if value is None and optional:
            continue
        if not ok(value):
            problems.append(f"{key}={value!r} (expected {expected})")
    if problems:
        raise CrackLightningError(f"Bad setting{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}. "
                                  f"Fix the override on the command line or the config file.")


def check_config(cfg: DictConfig) -> None:
    """Reject wrong types and contradictory settings before any data or weights are touched."""
    check_types(cfg)
    check_accelerator(cfg.trainer.get("accelerator"))
    unfreeze = cfg.get("finetune", {}).get("unfreeze_at_epoch") if cfg.get("finetune") else None
    max_epochs = cfg.trainer.get("max_epochs")
    if unfreeze is not None and max_epochs is not None and max_epochs >= 0 and unfreeze >= max_epochs:
        raise CrackLightningError(
            f"finetune.unfreeze_at_epoch={unfreeze} is not below trainer.max_epochs={max_epochs}: "
            f"the backbone would never train. Lower the one or raise the other, or use finetune=frozen."
        )


def check_accelerator(accelerator: str | None) -> None:
    """``trainer=gpu`` / ``trainer=ddp`` on a machine without a CUDA GPU: one line, not Lightning's
    error from deep inside the Trainer. torch is imported only when a GPU is asked for."""
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise CrackLightningError(
            f"trainer.accelerator={accelerator} (trainer=gpu or ddp): no CUDA GPU is visible here "
            f"(torch.cuda.is_available() is false). Use trainer=default (GPU if there is one, else CPU) or trainer=cpu.")


# --- typed settings: the helpers each settings dataclass checks itself with ---------------

Auto = Literal["auto"]
E = TypeVar("E", bound=Enum)
S = TypeVar("S")


def as_override(value: Any) -> str:
    """``value`` as it is typed in an override: ``true``, ``null``, ``[0.8, 0.1, 0.1]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(as_override(v) for v in value) + "]"
    return str(value)


def bad_setting(key: str, value: Any, expected: str) -> CrackLightningError:
    """The one line for a wrong value: ``data.split.strategy=grouped2: choose grouped or random.``"""
    return CrackLightningError(f"{key}={as_override(value)}: {expected}.")


def choice(key: str, value: Any, mode: type[E]) -> E:
    """``value`` as a member of the ``mode`` enum."""
    try:
        return mode(value)
    except ValueError:
        raise bad_setting(key, value, "choose " + " or ".join(str(m.value) for m in mode)) from None


def auto_or_bool(key: str, value: Any) -> bool | Auto:
    if value == "auto" or isinstance(value, bool):
        return value
    raise bad_setting(key, value, "choose auto, true or false")


def whole(key: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if not is_count(value) or value < minimum or (maximum is not None and value > maximum):
        upto = f" and <= {maximum}" if maximum is not None else ""
        raise bad_setting(key, value, f"a whole number >= {minimum}{upto}")
    return value


def settings_from(cls: type[S], node: Any, key: str) -> S:
    """A settings dataclass from its config node: ``None`` (the defaults), a dict or
    ``DictConfig`` (what Hydra's ``instantiate`` passes), or an instance already."""
    if node is None:
        return cls()
    if isinstance(node, cls):
        return node
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(node, Mapping):
        raise bad_setting(key, node, f"a group of settings ({', '.join(names)})")
    unknown = sorted(set(node) - set(names))
    if unknown:
        raise CrackLightningError(f"{key}.{unknown[0]}: no such setting; {key} has {', '.join(names)}.")
    return cls(**node)
