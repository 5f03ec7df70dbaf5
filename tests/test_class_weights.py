"""model.class_weights: none, auto (inverse class frequency of the training split) or one weight per
class; a wrong value is one line."""

from __future__ import annotations

import logging

import pytest
import torch

from crack_lightning import CrackLightningError
from crack_lightning.backbones import create_backbone
from crack_lightning.callbacks.model_card import ClassWeightsFromData
from crack_lightning.models import CrackClassifier


def _model(**kwargs) -> CrackClassifier:
    return CrackClassifier(create_backbone("custom_cnn", pretrained=False), optimizer=torch.optim.AdamW, **kwargs)


def test_given_weights_weigh_the_loss_and_stay_out_of_the_state_dict(monkeypatch):
    model = _model(class_weights=[1.0, 4.0])
    logits, targets = torch.tensor([[2.0, -1.0], [0.5, 0.2]]), torch.tensor([1, 0])
    monkeypatch.setattr(model, "forward", lambda images: logits)  # the model's own loss path, fixed logits
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)  # no trainer to log to
    loss = model._step((torch.zeros(2, 3, 32, 32), targets), "val")["loss"]
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([1.0, 4.0]))
    assert torch.allclose(loss, expected) and not torch.allclose(loss, torch.nn.functional.cross_entropy(logits, targets))
    assert model.class_weight.tolist() == [1.0, 4.0]
    assert "class_weight" not in model.state_dict()  # a checkpoint loads whatever weights it trained with
    assert _model().class_weight.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("value", ["balanced", [1.0], [1.0, 0.0], 3.0, [1.0, True]])
def test_a_wrong_setting_is_one_line(value):
    with pytest.raises(CrackLightningError, match=r"model.class_weights=.*: choose none, auto or 2 positive weights"):
        _model(class_weights=value)


class _Data:
    class_names = ["Negative", "Positive"]

    @staticmethod
    def class_counts(split: str) -> list[int]:
        assert split == "train"
        return [90, 10]


class _Trainer:
    datamodule = _Data()


def test_auto_weighs_a_crack_as_the_training_split_lacks_it(caplog):
    model = _model(class_weights="auto")
    with caplog.at_level(logging.INFO):
        ClassWeightsFromData().setup(_Trainer(), model, "fit")
    assert model.class_weight.tolist() == pytest.approx([0.2, 1.8])  # a crack weighs 9 sound patches; mean 1
    assert "Negative 0.2, Positive 1.8" in caplog.text
    untouched = _model()
    ClassWeightsFromData().setup(_Trainer(), untouched, "fit")
    assert untouched.class_weight.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("sampler, low, high", [("balanced", 0.35, 0.65), ("none", 0.05, 0.15)])
def test_a_balanced_sampler_draws_the_rare_class_as_often(tmp_path, sampler, low, high):
    """data.loader.sampler=balanced on a set with 10 % cracks: the training batches hold about as
    many cracks as sound patches; none keeps the set's share."""
    from crack_lightning.data import CrackDataModule
    from crack_lightning.data.synthetic.generate import generate

    root = tmp_path / "imbalanced"
    generate(root, per_class=100, seed=0, size=48)
    for extra in sorted((root / "Positive").glob("*.jpg"))[10:]:
        extra.unlink()  # 10 cracks, 100 sound patches
    (root / "synthetic.json").unlink()
    torch.manual_seed(0)
    dm = CrackDataModule(str(root), {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3},
                         split={"strategy": "random", "fractions": [0.6, 0.2, 0.2]}, cache={"enabled": False},
                         loader={"batch_size": 8, "num_workers": 0, "sampler": sampler})
    dm.setup("fit")
    labels = torch.cat([targets for _ in range(5) for _, targets in dm.train_dataloader()])
    assert low <= labels.float().mean().item() <= high, labels.float().mean()
