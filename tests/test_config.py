"""Every config group composes and instantiates; contradictions fail before any data is touched."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from crack_lightning import CrackLightningError
from crack_lightning.callbacks import FreezeUnfreeze
from crack_lightning.config_checks import check_config
from crack_lightning.train import instantiate_group
from crack_lightning.trainer import build_trainer, resolve_precision
from tests.conftest import CONF, compose_cfg

BACKBONES = {"mobilenetv2": "mobilenetv2_100", "efficientnet": "efficientnet_b0", "custom_cnn": "custom_cnn"}


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_expected_choices():
    assert group_choices("backbone") == ["custom_cnn", "efficientnet", "mobilenetv2", "timm"]
    assert group_choices("finetune") == ["freeze_unfreeze", "frozen", "full"]
    assert group_choices("augmentation") == ["none", "seeds"]
    assert {"demo", "keras_seed"} <= set(group_choices("experiment"))


@pytest.mark.parametrize("choice", ["mobilenetv2", "efficientnet", "custom_cnn"])
def test_backbone_choices_build_the_model_and_data(choice, tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data, [f"backbone={choice}"])
    assert cfg.backbone.name == BACKBONES[choice]
    model = instantiate(cfg.model)
    assert model.backbone.pretrained_cfg["architecture"] == BACKBONES[choice]
    dm = instantiate(cfg.data, data_config=model.data_config)
    assert dm.data_config["input_size"] == (3, 32, 32)  # debug=fast overrides the size
    assert dm.data_config["mean"] == model.backbone.pretrained_cfg["mean"]


def test_timm_choice_takes_any_timm_name(tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data, ["backbone=timm", "backbone.name=resnet18"])
    model = instantiate(cfg.model)
    assert model.backbone.pretrained_cfg["architecture"] == "resnet18"
    with pytest.raises(Exception, match="Missing mandatory value"):
        instantiate(compose_cfg(tmp_path, tiny_data, ["backbone=timm"]).model)


def test_input_size_comes_from_the_backbone_unless_overridden(tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn", "data.image_size=null"])
    model = instantiate(cfg.model)
    dm = instantiate(cfg.data, data_config=model.data_config)
    assert dm.data_config["input_size"] == (3, 227, 227)


@pytest.mark.parametrize(
    "choice, unfreeze, ratio", [("freeze_unfreeze", 2, 0.1), ("full", 0, 1.0), ("frozen", None, 0.0)]
)
def test_finetune_choices(choice, unfreeze, ratio, tmp_path, tiny_data):
    callback = instantiate(compose_cfg(tmp_path, tiny_data, [f"finetune={choice}"]).finetune)
    assert isinstance(callback, FreezeUnfreeze)
    assert (callback.unfreeze_at_epoch, callback.backbone_lr_ratio) == (unfreeze, ratio)


@pytest.mark.parametrize("choice", ["seeds", "none"])
def test_augmentation_choices(choice, tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data, [f"augmentation={choice}"])
    augmentation = instantiate(cfg.augmentation)
    transform = augmentation.pil({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    names = [type(t).__name__ for t in transform.transforms]
    assert ("RandomRotation" in names and "RandomHorizontalFlip" in names) == (choice == "seeds")
    batch = augmentation.batch({"mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert (batch.rotation, batch.hflip) == ((0.2, 0.5) if choice == "seeds" else (0.0, 0.0))


def test_callbacks_loggers_and_trainer_instantiate(tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data)
    callbacks = instantiate_group(cfg.callbacks)
    names = {type(c).__name__ for c in callbacks}
    assert {"ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "AugmentationPreview", "TestReport"} <= names
    assert "RichProgressBar" not in names and "EpochLog" in names  # debug=fast: no live bar
    assert {type(x).__name__ for x in instantiate_group(cfg.logger)} == {"TensorBoardLogger", "CSVLogger"}
    trainer = build_trainer(cfg.trainer)
    assert trainer.max_epochs == 3


@pytest.mark.parametrize("name", ["demo", "keras_seed"])
def test_experiments_compose(name, tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data, [f"experiment={name}", "~debug"])
    check_config(cfg)
    assert cfg.backbone.name == "mobilenetv2_100"
    if name == "keras_seed":
        assert cfg.data.image_size == 160 and cfg.model.scheduler is None
        assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.lr == 1e-4
        assert cfg.callbacks.early_stopping.patience == 3
        assert list(cfg.data.split.fractions) == [0.8, 0.1, 0.1]


def test_unfreeze_epoch_beyond_max_epochs_is_refused(tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data, ["finetune.unfreeze_at_epoch=5", "trainer.max_epochs=5"])
    with pytest.raises(CrackLightningError, match="finetune.unfreeze_at_epoch=5"):
        check_config(cfg)


def test_misspelled_key_is_refused(tmp_path, tiny_data):
    with pytest.raises(Exception, match="lrr"):
        compose_cfg(tmp_path, tiny_data, ["model.lrr=1e-3"])


def test_precision_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
    assert resolve_precision("auto", accelerator="cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto") == "16-mixed"
    assert resolve_precision("32-true") == "32-true"


def test_composed_config_is_fully_resolvable(tmp_path, tiny_data):
    cfg = compose_cfg(tmp_path, tiny_data)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["data"]["split"]["file"] == str(tmp_path / "run" / "splits.csv")
