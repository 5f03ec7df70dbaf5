"""Hand the model its card -- class names, preprocessing, run config -- when training starts."""

from __future__ import annotations

import lightning as L

from crack_lightning.model_card import ModelCard, Preprocessing


class ModelCardFromData(L.Callback):
    """In ``setup`` (every rank, every stage), give a model without a card one built from
    the data module's ``class_names`` and ``preprocessing()`` and the run ``config``; the
    model saves it in every checkpoint, and :class:`OperatingPoint` later adds the threshold.

    A callback because it is the one hook that sees both: Lightning calls it after the
    data module's ``setup`` (class folders scanned, split made) and before the model's,
    so the model never reaches into ``trainer.datamodule`` and works with any data module
    or none (``load_classifier`` reads the card from the checkpoint). Built once: a
    later ``validate`` / ``test`` keeps the card, operating point included, and a
    checkpoint loaded afterwards brings its own (``CrackClassifier.on_load_checkpoint``).
    A data module without ``class_names`` / ``preprocessing()`` leaves the model without a
    card (its checkpoints cannot be used by predict.py, as before).
    """

    def __init__(self, config: dict | None = None):
        self.config = config

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if getattr(pl_module, "card", None) is not None or not getattr(datamodule, "class_names", None) \
                or not hasattr(datamodule, "preprocessing"):
            return
        preprocessing = datamodule.preprocessing()  # a data module of one's own may give the stored dict
        if not isinstance(preprocessing, Preprocessing):
            preprocessing = Preprocessing.from_dict(preprocessing, where="datamodule.preprocessing()")
        pl_module.card = ModelCard(class_names=list(datamodule.class_names), preprocessing=preprocessing,
                                   config=self.config)
