"""Config groups made into objects (Hydra's instantiate), for every command that composes them."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_group(group: DictConfig | None, **override) -> list:
    """Instantiate every entry of a config group dict that has a ``_target_`` (nulls are skipped);
    ``override``: values for the entries that have those keys (e.g. another ``output_dir``)."""
    if not group:
        return []
    return [instantiate(node, **{key: value for key, value in override.items() if key in node})
            for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]
