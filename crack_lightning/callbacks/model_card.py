"""Hand the model what only the data knows when training starts: its card (class names,
preprocessing, run config) and, for ``model.class_weights: auto``, the class weights."""

from __future__ import annotations

import logging

import lightning as L
from timm.loss.class_weights import compute_class_weights

from crack_lightning.model_card import ModelCard, Preprocessing

log = logging.getLogger(__name__)


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


class ClassWeightsFromData(L.Callback):
    """In ``setup``, give a model with ``class_weights: auto`` the inverse class frequency of the
    training split (timm's ``inv_freq``, ``n / n_c`` scaled to mean 1): on a set with 10 %
    cracks a crack weighs 9 times a sound patch. The data module's split is only known after its
    ``setup``; a resumed run gets the same weights from the same split."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "hparams", {}).get("class_weights") != "auto" or stage != "fit":
            return
        counts = trainer.datamodule.class_counts("train")
        weights = compute_class_weights(counts, sum(counts), method="inv_freq")[1].tolist()
        pl_module.set_class_weights(weights)
        names = getattr(trainer.datamodule, "class_names", None) or [str(i) for i in range(len(counts))]
        log.info("Class weights (model.class_weights=auto, from the training split): %s",
                 ", ".join(f"{name} {w:.3g}" for name, w in zip(names, weights)))
