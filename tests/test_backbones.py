"""Backbones come from timm's registry; weights load offline or fail with a way out."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from crack_lightning import CrackLightningError
from crack_lightning.backbones import create_backbone, stage_modules


@pytest.mark.parametrize("name", ["mobilenetv2_100", "efficientnet_b0", "custom_cnn", "resnet18"])
def test_backbones_give_pooled_features_and_stages(name):
    backbone = create_backbone(name)
    features = backbone(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, backbone.num_features)
    assert len(stage_modules(backbone)) >= 3
    cfg = timm.data.resolve_data_config({}, model=backbone)
    assert len(cfg["mean"]) == 3 and len(cfg["input_size"]) == 3


def test_custom_cnn_is_in_timms_registry():
    assert "custom_cnn" in timm.list_models()
    model = timm.create_model("custom_cnn", num_classes=2)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 2)


def test_unknown_backbone_lists_choices():
    with pytest.raises(CrackLightningError) as err:
        create_backbone("mobilenet_v2")
    message = str(err.value)
    assert "mobilenetv2_100" in message  # a close match
    for choice in ("mobilenetv2", "efficientnet", "custom_cnn", "timm"):
        assert choice in message


def test_missing_weights_message_names_both_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(CrackLightningError) as err:
        create_backbone("mobilenetv2_100", pretrained=True)
    message = str(err.value)
    assert "backbone.pretrained=false" in message
    assert "backbone.weights=" in message


def test_local_weights_file_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # random weights stand in for ImageNet's; a fresh random init would not match them
    source = timm.create_model("mobilenetv2_100", pretrained=False)
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(file))

    backbone = create_backbone("mobilenetv2_100", weights=str(file))
    loaded = backbone.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("classifier"):
            assert torch.equal(loaded[key], value), key
    assert backbone.num_classes == 0  # the 1000-class head is not ours

    with pytest.raises(CrackLightningError, match="backbone.weights=.*no such file"):
        create_backbone("mobilenetv2_100", weights=str(tmp_path / "missing.safetensors"))
