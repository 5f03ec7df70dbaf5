"""The model card: what a trained classifier carries besides its weights, as one type.

Class names and which of them are cracks, the preprocessing to repeat (input size,
interpolation, mean, std, native patch size), the operating point (threshold, temperature
and how they were chosen) and the run config. One producer, one shape -- timm's ``resolve_data_config`` idea:
training hands the model its card (:class:`~crack_lightning.callbacks.model_card.ModelCardFromData`,
completed by :class:`~crack_lightning.callbacks.OperatingPoint`), the checkpoint and the
``.onnx`` metadata store it, and predict, export and evaluation read it back with
:meth:`ModelCard.from_checkpoint` / :meth:`ModelCard.from_onnx_metadata`.

The dataclasses are the in-memory shape only: on disk the keys are those train.py and
export.py always wrote, so older checkpoints and ``.onnx`` files load. Nothing here
imports torch (a state dict's 0-d tensors are read with ``float()``).

>>> pre = Preprocessing.from_dict({"input_size": [224, 224], "interpolation": "bilinear",
...                                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
>>> pre.to_timm_data_config()["input_size"], pre.native_size  # no patch_size: the input size
((3, 224, 224), (224, 224))
>>> card = ModelCard(["Negative", "Positive"], pre, threshold=0.3)
>>> ModelCard.from_onnx_metadata(card.to_onnx_metadata()) == card
True
>>> card.positive_classes, card.positive_labels  # two classes: label 1 is the crack class
(['Positive'], [1])
>>> ModelCard(["clean", "crack", "stain"], pre, config={"model": {"positive_classes": [1]}}).positive_classes
['crack']
>>> Preprocessing.from_dict({"input_size": [224, 224], "mean": [0.5] * 3})  # doctest: +ELLIPSIS
Traceback (most recent call last):
crack_lightning.CrackLightningError: preprocessing lacks interpolation, std (a card needs ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import ClassVar

from crack_lightning import CrackLightningError

SECTION = "crack_lightning"  # the checkpoint's entry for the card (next to state_dict)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input, as in validation (``eval_transform``).

    On disk (:meth:`to_dict`): ``{"input_size": [h, w], "interpolation", "mean", "std",
    "patch_size": [h, w] | None}``; :meth:`to_timm_data_config` gives timm's shape
    (``input_size`` ``(3, h, w)``) that the transforms take.
    """

    input_size: tuple[int, int]  # [height, width] the model sees
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: tuple[int, int] | None = None  # native [height, width] of the training images

    REQUIRED: ClassVar[tuple[str, ...]] = ("input_size", "interpolation", "mean", "std")

    @classmethod
    def missing(cls, data) -> list[str]:
        """The :attr:`REQUIRED` keys ``data`` lacks (all of them if it is no mapping)."""
        if not isinstance(data, dict):
            return list(cls.REQUIRED)
        return [key for key in cls.REQUIRED if key not in data]

    @classmethod
    def from_dict(cls, data: dict, where: str = "preprocessing") -> Preprocessing:
        """The stored dict (``patch_size`` may be absent); one line naming ``where`` and the
        keys when one is missing."""
        if lacks := cls.missing(data):
            raise CrackLightningError(
                f"{where} lacks {', '.join(lacks)} (a card needs {', '.join(cls.REQUIRED)}); "
                f"use the file train.py or export.py wrote."
            )
        patch = data.get("patch_size")
        return cls(
            input_size=tuple(int(v) for v in data["input_size"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            patch_size=tuple(int(v) for v in patch) if patch else None,
        )

    def to_dict(self) -> dict:
        """The stored shape (lists, for JSON and torch's ``weights_only`` loader)."""
        return {
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "patch_size": list(self.patch_size) if self.patch_size else None,
        }

    @classmethod
    def from_timm_data_config(cls, data_config: dict, patch_size: tuple[int, int] | None = None) -> Preprocessing:
        """From timm's ``resolve_data_config`` shape (``input_size`` ``(3, h, w)``)."""
        return cls.from_dict({
            "input_size": list(data_config["input_size"][-2:]),
            "interpolation": data_config.get("interpolation", "bilinear"),  # timm's default too
            "mean": data_config["mean"],
            "std": data_config["std"],
            "patch_size": patch_size,
        }, where="data_config")

    def to_timm_data_config(self) -> dict:
        """timm's shape, which :func:`~crack_lightning.data.augmentation.eval_transform` takes."""
        return {"input_size": (3, *self.input_size), "interpolation": self.interpolation,
                "mean": self.mean, "std": self.std}

    @property
    def native_size(self) -> tuple[int, int]:
        """[height, width] of the training images -- the whole-photo window -- or the input
        size when unknown (a checkpoint written before patch_size was recorded)."""
        return self.patch_size or self.input_size


@dataclass(frozen=True)
class ModelCard:
    """What predict, export and evaluation need of a trained model, besides its weights.

    In a checkpoint the card is the ``crack_lightning`` entry (:meth:`to_checkpoint`)
    and the ``threshold`` / ``temperature`` buffers of the state dict; in an ``.onnx``
    file it is the ``metadata_props`` of :meth:`to_onnx_metadata` (no run config).
    Crack when P(any crack class) -- the sum of ``softmax(logits / temperature)`` over
    ``positive_classes`` -- is above ``threshold``.
    """

    class_names: list[str]  # in label order; two classes: [no-crack, crack]
    preprocessing: Preprocessing
    threshold: float = 0.5  # until an operating point is fitted
    temperature: float = 1.0
    operating_point: dict = field(default_factory=dict)  # how they were chosen (OperatingPoint)
    config: dict | None = None  # the resolved run config, to rebuild the model
    # The crack classes' names. One source of truth: a checkpoint's run config (its model.positive_classes,
    # labels: what the model's positive_mask sums); an .onnx file stores them as names (it has no config).
    # Neither, as in files written before N classes: [class_names[1]] of two.
    positive_classes: list[str] | None = None
    # named operating points beside the one above, e.g. a site's (recalibrate.py): name -> point
    # (threshold, temperature and how they were chosen); read one with :meth:`at`
    operating_points: dict = field(default_factory=dict)

    ONNX_KEYS: ClassVar[tuple[str, ...]] = ("preprocessing", "class_names", "threshold", "temperature")

    def __post_init__(self):
        labels = ((self.config or {}).get("model") or {}).get("positive_classes")
        if labels is not None:
            names = [self.class_names[int(k)] for k in labels]
        elif self.positive_classes is not None:
            names = [str(c) for c in self.positive_classes]
        elif len(self.class_names) == 2:
            names = [self.class_names[1]]
        else:
            raise CrackLightningError(f"model card of {self.class_names}: no positive_classes to say which are cracks "
                                      f"(more than two classes need them); use the file train.py or export.py wrote.")
        if unknown := [c for c in names if c not in self.class_names]:
            raise CrackLightningError(f"model card: positive class {unknown[0]} is not one of {self.class_names}; "
                                      f"use the file train.py or export.py wrote.")
        object.__setattr__(self, "positive_classes", names)  # frozen: the dataclass's own way to fill a default

    @property
    def positive_labels(self) -> list[int]:
        """The crack classes' labels (indices into ``class_names``)."""
        return [self.class_names.index(c) for c in self.positive_classes]

    @staticmethod
    def missing(checkpoint) -> list[str]:
        """The card's keys a checkpoint dict lacks, dotted (``crack_lightning.preprocessing.std``)."""
        section = checkpoint.get(SECTION) if isinstance(checkpoint, dict) else None
        section = section if isinstance(section, dict) else {}
        lacks = [f"{SECTION}.preprocessing.{key}" for key in Preprocessing.missing(section.get("preprocessing"))]
        return lacks + ([] if section.get("class_names") else [f"{SECTION}.class_names"])

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, where: str = "checkpoint") -> ModelCard:
        """The card of a checkpoint dict (``torch.load``'s); older checkpoints without the
        operating point read as uncalibrated at 0.5."""
        if lacks := cls.missing(checkpoint):
            raise CrackLightningError(f"{where}: lacks {', '.join(lacks)}, needed to prepare images as in "
                                      f"training; use the checkpoint train.py wrote, or retrain.")
        section = checkpoint[SECTION]
        state = checkpoint.get("state_dict") if isinstance(checkpoint.get("state_dict"), dict) else {}
        return cls(
            class_names=list(section["class_names"]),
            preprocessing=Preprocessing.from_dict(section["preprocessing"]),
            threshold=float(state.get("threshold", 0.5)),
            temperature=float(state.get("temperature", 1.0)),
            operating_point=dict(section.get("operating_point") or {}),
            config=section.get("config"),
            operating_points=dict(section.get("operating_points") or {}),
        )

    def to_checkpoint(self) -> dict:
        """The checkpoint's ``crack_lightning`` entry (threshold and temperature travel as the
        model's buffers in the state dict)."""
        return {
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "operating_point": dict(self.operating_point),
            "config": self.config,
            # only when there are some: a checkpoint without named points keeps the shape it always had
            **({"operating_points": dict(self.operating_points)} if self.operating_points else {}),
        }

    @classmethod
    def from_onnx_metadata(cls, meta: dict[str, str], where: str = "the .onnx metadata") -> ModelCard:
        """The card of an export.py file's ``metadata_props``; one line naming what it lacks (files
        written before N classes lack ``positive_classes``: two classes, label 1)."""
        if lacks := [key for key in cls.ONNX_KEYS if key not in meta]:
            raise CrackLightningError(f"{where}: lacks {', '.join(lacks)}; export the checkpoint again with export.py.")
        preprocessing = json.loads(meta["preprocessing"])
        if lacks := Preprocessing.missing(preprocessing):
            raise CrackLightningError(f"{where}: its metadata's preprocessing lacks {', '.join(lacks)}, needed to "
                                      f"prepare images as in training; export the checkpoint again with export.py.")
        return cls(
            class_names=list(json.loads(meta["class_names"])),
            preprocessing=Preprocessing.from_dict(preprocessing),
            threshold=float(meta["threshold"]),
            temperature=float(meta["temperature"]),
            operating_point=json.loads(meta.get("operating_point") or "{}"),
            positive_classes=json.loads(meta["positive_classes"]) if "positive_classes" in meta else None,
            operating_points=json.loads(meta.get("operating_points") or "{}"),
        )

    def to_onnx_metadata(self) -> dict[str, str]:
        """The card as ``metadata_props`` strings (JSON for structures; ``repr`` keeps every float digit)."""
        return {
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
            "class_names": json.dumps(list(self.class_names)),
            "threshold": repr(float(self.threshold)),
            "temperature": repr(float(self.temperature)),
            "operating_point": json.dumps(self.operating_point),
            "positive_classes": json.dumps(list(self.positive_classes)),
            "operating_points": json.dumps(self.operating_points),
        }

    def point(self, name: str, key: str = "operating_point") -> dict:
        """The named operating point ``name``; one line naming ``key`` and the names there are."""
        if name not in self.operating_points:
            there = ", ".join(sorted(self.operating_points)) or "none (recalibrate.py ckpt=... name=<site> adds one)"
            raise CrackLightningError(f"{key}={name}: the model has no operating point of that name; it has {there}.")
        return dict(self.operating_points[name])

    def with_named_point(self, name: str, point: dict) -> ModelCard:
        """This card with ``point`` stored as ``name`` (its default operating point unchanged)."""
        return replace(self, operating_points={**self.operating_points, name: dict(point)})

    def with_operating_point(self, point: dict) -> ModelCard:
        """This card read at ``point``'s threshold and temperature (an :class:`OperatingPoint` fit)."""
        return replace(self, threshold=float(point["threshold"]), temperature=float(point["temperature"]),
                       operating_point=dict(point))
