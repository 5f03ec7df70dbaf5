"""The checks a setting's value gets, each refusal one line naming the key: ``key=value: what it must be.``

Torch-free: the commands check what the user typed before torch is imported.

>>> whole("data.loader.batch_size", 0, minimum=1)
Traceback (most recent call last):
crack_lightning.CrackLightningError: data.loader.batch_size=0: a whole number >= 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal, TypeVar

from omegaconf import DictConfig, OmegaConf

from crack_lightning import CrackLightningError

def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        names = [str(m.value) for m in mode]
        raise bad_setting(key, value, "choose " + (", ".join(names[:-1]) + " or " if len(names) > 1 else "")
                          + names[-1]) from None


def auto_or_bool(key: str, value: Any) -> bool | Auto:
    if value == "auto" or isinstance(value, bool):
        return value
    raise bad_setting(key, value, "choose auto, true or false")


def whole(key: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if not is_count(value) or value < minimum or (maximum is not None and value > maximum):
        upto = f" and <= {maximum}" if maximum is not None else ""
        raise bad_setting(key, value, f"a whole number >= {minimum}{upto}")
    return value


def settings_from(cls: type[S], node: Any, key: str, was: str | None = None) -> S:
    """A settings dataclass from its config node: ``None`` (the defaults), a dict or
    ``DictConfig`` (what Hydra's ``instantiate`` passes), or an instance already. ``was``: the
    key a single value under ``key`` now belongs to (``key`` was a setting, not a group)."""
    if node is None:
        return cls()
    if isinstance(node, cls):
        return node
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(node, Mapping):
        hint = f"; write {was}={as_override(node)}" if was else ""
        raise bad_setting(key, node, f"{key} is a group of settings ({', '.join(names)}){hint}")
    unknown = sorted(set(node) - set(names))
    if unknown:
        raise CrackLightningError(f"{key}.{unknown[0]}: no such setting; {key} has {', '.join(names)}.")
    return cls(**node)
