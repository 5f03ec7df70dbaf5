"""Types and ranges of the settings people override most, checked before any data or
weights are touched: ``model.lr=abc`` should be one line naming the key, not a
traceback from deep inside the optimizer after the dataset was split and decoded.

Hydra itself already refuses unknown keys (``Key 'max_epoch' is not in struct``).
The ``data`` groups (``data.split``, ``data.screening``, ``data.cache``, ``data.loader``)
are typed settings that check themselves (:mod:`crack_lightning.data.settings`); this
module makes them early and keeps the rules that span groups. Torch-free.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from crack_lightning import CrackLightningError
from crack_lightning.utils.checks import is_count, is_number

OUR_DATA_MODULE = "crack_lightning.data.CrackDataModule"
NUMBER = "a number"
COUNT = "a whole number"


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
    "eval.prevalence": ("null or a crack rate in (0, 1)", lambda v: is_number(v) and 0 < v < 1, True),
    "trainer.compile": ("false, true or inference", lambda v: v is False or v is True or v == "inference", True),
}


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
    if cfg.get("data") and cfg.data.get("_target_") == OUR_DATA_MODULE:  # a data module of one's own checks itself
        from crack_lightning.data.settings import check_data

        check_data(cfg.data)
    check_accelerator(cfg.trainer.get("accelerator"))
    check_test_sets(cfg.get("eval", {}).get("test_sets"))
    unfreeze = cfg.get("finetune", {}).get("unfreeze_at_epoch") if cfg.get("finetune") else None
    max_epochs = cfg.trainer.get("max_epochs")
    if unfreeze is not None and max_epochs is not None and max_epochs >= 0 and unfreeze >= max_epochs:
        raise CrackLightningError(
            f"finetune.unfreeze_at_epoch={unfreeze} is not below trainer.max_epochs={max_epochs}: "
            f"the backbone would never train. Lower the one or raise the other, or use finetune=frozen."
        )


def check_test_sets(test_sets) -> None:
    """``eval.test_sets``: ``{name: a folder or a manifest, or a mapping of data keys}``, each there."""
    from pathlib import Path

    if not test_sets:
        return
    example = "eval.test_sets={site_b: /data/site_b, site_c: site_c.csv}"
    if not OmegaConf.is_dict(test_sets) and not isinstance(test_sets, dict):
        raise CrackLightningError(f"eval.test_sets={test_sets}: give named sets, e.g. {example}.")
    for name, spec in test_sets.items():
        key = f"eval.test_sets.{name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", str(name)):
            raise CrackLightningError(f"{key}: name the set with letters, digits, '_', '-' or '.' (it names a "
                                      f"folder of the run and its metrics), e.g. {example}.")
        if isinstance(spec, str):
            if not Path(spec).expanduser().exists():
                raise CrackLightningError(f"{key}={spec}: no such folder or file; give a labelled folder or a "
                                          f"manifest (.csv, .parquet), e.g. {example}.")
        elif not (OmegaConf.is_dict(spec) or isinstance(spec, dict)) or not (spec.get("root") or spec.get("manifest")):
            raise CrackLightningError(f"{key}={spec}: give a folder, a manifest, or data keys such as "
                                      f"{{root: <folder>, class_map: {{...}}}}, e.g. {example}.")


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
