"""The frozen phase's optimised backbone (crack_lightning.models.frozen): same features as the
eager module, rebuilt when its weights change, dropped at the unfreeze, never in a checkpoint."""

from __future__ import annotations

import pickle
from functools import partial

import lightning as L
import pytest
import torch

from crack_lightning import CrackLightningError
from crack_lightning.backbones import create_backbone
from crack_lightning.callbacks import FreezeUnfreeze
from crack_lightning.data import CrackDataModule
from crack_lightning.models import CrackClassifier
from crack_lightning.models.frozen import PAYBACK_PIXELS, FrozenBackbone, FrozenMethod

pytest.importorskip("onnxruntime")


def make_model(name: str = "custom_cnn", method: str = "onnxruntime") -> CrackClassifier:
    torch.manual_seed(0)
    model = CrackClassifier(create_backbone(name), optimizer=partial(torch.optim.Adam), lr=1e-2)
    model.frozen_backbone = FrozenBackbone(method)
    return model


def freeze(model: CrackClassifier) -> CrackClassifier:
    """What FreezeUnfreeze does while frozen: no gradients, eval mode (BatchNorm statistics fixed)."""
    model.backbone.requires_grad_(False).eval()
    return model


def shuffle_batchnorm(module: torch.nn.Module, seed: int) -> None:
    """Running statistics far from the initial 0 / 1, so folding them into the convolutions matters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def eager(model: CrackClassifier, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.backbone(x.contiguous(memory_format=torch.channels_last))


def test_the_copy_gives_the_eager_features_and_only_the_head_trains():
    model = freeze(make_model("mobilenetv2_100"))
    shuffle_batchnorm(model.backbone, 0)
    x = torch.randn(6, 3, 64, 64)
    model.head.eval()  # no dropout: logits comparable
    logits = model(x)
    assert model.frozen_backbone.active and model.frozen_backbone.builds == 1
    torch.testing.assert_close(model.frozen_backbone(model.backbone, x.contiguous(memory_format=torch.channels_last)),
                               eager(model, x), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, model.head(eager(model, x)), atol=1e-4, rtol=0)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    # other batch sizes reuse the copy; a new input size gets its own
    torch.testing.assert_close(model.frozen_backbone(model.backbone, x[:1]), eager(model, x[:1]), atol=1e-4, rtol=0)
    assert model.frozen_backbone.builds == 1
    model(torch.randn(2, 3, 32, 32))
    assert model.frozen_backbone.builds == 2
    # a backbone in training mode (BatchNorm on batch statistics) is never served by the copy
    model.backbone.train()
    assert model.frozen_backbone(model.backbone, x) is None


def test_the_copy_follows_loaded_weights_and_dtype_or_device_moves():
    model = freeze(make_model())
    x = torch.randn(4, 3, 32, 32)
    model(x)
    other = freeze(make_model())
    shuffle_batchnorm(other.backbone, 1)
    for p in other.backbone.parameters():
        p.data.mul_(1.5)
    model.load_state_dict(other.state_dict())  # in place: same storage, new values
    torch.testing.assert_close(model.frozen_backbone(model.backbone, x), eager(other, x), atol=1e-4, rtol=0)
    assert model.frozen_backbone.builds == 2
    model.double().float()  # new storage, as a move to another device gives
    model(x)
    assert model.frozen_backbone.builds == 3
    model.on_load_checkpoint({"state_dict": {}})
    assert not model.frozen_backbone.active
    model.double()  # the copy computes float32: another dtype is refused when asked for, eager under auto
    with pytest.raises(CrackLightningError, match="trainer.frozen_backbone=onnxruntime"):
        model(x.double())
    model.frozen_backbone = FrozenBackbone("auto")
    model.frozen_backbone.plan(10**6, torch.device("cpu"))
    assert model(x.double()).dtype == torch.float64 and not model.frozen_backbone.active


class Probe(L.Callback):
    def __init__(self):
        self.seen: dict[str, object] = {}

    def on_validation_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:  # validation of the frozen epoch ran through the copy
            self.seen["frozen"] = (pl_module.frozen_backbone.active, pl_module.frozen_backbone.builds)
            self.seen["weights"] = [p.detach().clone() for p in pl_module.backbone.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            self.seen["unfrozen"] = pl_module.frozen_backbone.active
            self.seen["grads"] = all(p.grad is not None for p in pl_module.backbone.parameters())


def fit(model, tiny_data, tmp_path, epochs: int, finetune: FreezeUnfreeze, **kwargs) -> L.Trainer:
    dm = CrackDataModule(tiny_data, data_config=model.data_config, image_size=32,
                         loader={"batch_size": 8, "num_workers": 0}, split={"file": str(tmp_path / "splits.csv")})
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                        callbacks=[finetune, *kwargs.pop("callbacks", [])], **kwargs)
    trainer.fit(model, dm)
    return trainer


def test_the_copy_is_dropped_at_the_unfreeze_and_the_backbone_then_trains(tiny_data, tmp_path):
    model, probe = make_model(), Probe()
    fit(model, tiny_data, tmp_path, 2, FreezeUnfreeze(unfreeze_at_epoch=1), callbacks=[probe], enable_checkpointing=False)
    assert probe.seen["frozen"] == (True, 1), "the frozen epoch (validation included) ran on one copy"
    assert probe.seen["unfrozen"] is False and probe.seen["grads"]
    after = list(model.backbone.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(probe.seen["weights"], after) if a.dim() > 1)


def test_the_copy_never_reaches_a_checkpoint(tiny_data, tmp_path):
    model = make_model()
    trainer = fit(model, tiny_data, tmp_path, 1, FreezeUnfreeze(unfreeze_at_epoch=None))
    assert model.frozen_backbone.active
    assert list(model.state_dict()) == list(make_model().state_dict())
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert list(checkpoint["state_dict"]) == list(model.state_dict())
    fresh = make_model()
    fresh.load_state_dict(checkpoint["state_dict"])
    restored = pickle.loads(pickle.dumps(model))  # ddp_spawn pickles the module: the session stays behind
    assert not restored.frozen_backbone.active and restored.frozen_backbone.method is FrozenMethod.ONNXRUNTIME


def test_auto_builds_a_copy_only_for_a_frozen_phase_that_pays_it_back(tiny_data, tmp_path):
    model = freeze(make_model(method="auto"))
    frozen, x = model.frozen_backbone, torch.randn(2, 3, 32, 32)
    enough = PAYBACK_PIXELS / (32 * 32)  # frozen images ahead that pay the export back at 32 px
    frozen.plan(enough, torch.device("cuda"))  # onnxruntime runs on the CPU only
    assert frozen(model.backbone, x) is None
    frozen.plan(enough - 1, torch.device("cpu"))
    assert frozen(model.backbone, x) is None and frozen.chosen is FrozenMethod.EAGER
    assert frozen(model.backbone, torch.randn(2, 3, 64, 64)) is None  # decided for the phase, not per call
    frozen.plan(enough, torch.device("cpu"))
    assert frozen(model.backbone, x) is not None and frozen.chosen is FrozenMethod.ONNXRUNTIME
    frozen.plan(1, torch.device("cpu"))  # the last frozen epoch keeps the copy already paid for
    assert frozen.chosen is FrozenMethod.ONNXRUNTIME
    frozen.drop()
    assert frozen.chosen is FrozenMethod.EAGER
    model = make_model(method="auto")  # the test suite's tiny runs stay eager: no export to pay
    fit(model, tiny_data, tmp_path, 1, FreezeUnfreeze(unfreeze_at_epoch=None), enable_checkpointing=False)
    assert model.frozen_backbone.builds == 0
    with pytest.raises(CrackLightningError, match="trainer.frozen_backbone=fast: choose auto, eager, onnxruntime"):
        FrozenBackbone("fast")


def test_compile_if_asked_sets_the_method_from_the_trainer_config():
    from omegaconf import OmegaConf

    from crack_lightning.trainer import compile_if_asked

    model = make_model()
    compile_if_asked(OmegaConf.create({"compile": False, "frozen_backbone": "eager"}), model)
    assert model.frozen_backbone.method is FrozenMethod.EAGER
    compile_if_asked(OmegaConf.create({"compile": False}), model)
    assert model.frozen_backbone.method is FrozenMethod.AUTO
    compile_if_asked(OmegaConf.create({"compile": True}), model)  # compiles every call (lazily): no copy besides
    assert model.frozen_backbone.method is FrozenMethod.EAGER


def test_fixed_inputs_keep_their_frozen_features_exactly_until_the_weights_change():
    model = freeze(make_model(method="eager"))
    frozen, x = model.frozen_backbone, torch.randn(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    frozen.plan(1, torch.device("cpu"), fixed_inputs=True)
    calls = []

    def counted(images):
        calls.append(len(images))
        return model.backbone(images)

    with torch.no_grad():
        first = frozen(model.backbone, x, counted)
        assert torch.equal(first, model.backbone(x)), "the backbone's own numbers"
        mixed = torch.cat([x[3:], torch.randn(2, 3, 32, 32)])  # 3 seen, in another batch; 2 new
        again = frozen(model.backbone, mixed, counted)
        assert calls == [6, 2] and torch.equal(again[:3], first[3:])
        assert torch.equal(again[3:], model.backbone(mixed[3:]))
        assert (frozen.memo.hits, frozen.memo.misses) == (3, 8)
        nudged = x.clone()
        nudged[0, 0, 0, 0] += 1e-6  # a bit off: another image
        frozen(model.backbone, nudged[:1], counted)
        assert calls[-1] == 1
        next(model.backbone.parameters()).add_(1.0)  # new weights: nothing kept is theirs
        assert torch.equal(frozen(model.backbone, x, counted), model.backbone(x)) and calls[-1] == 6
    frozen.drop()
    assert frozen.memo is None


def test_augmentation_none_serves_the_second_frozen_epoch_from_memory(tiny_data, tmp_path):
    """Through FreezeUnfreeze and the data module: the frozen epochs without augmentation compute
    each image once; at the unfreeze the kept features go; with augmentation nothing is kept."""
    from crack_lightning.data.augmentation import FlipRotate

    class Memo(L.Callback):
        seen = {}

        def on_train_epoch_end(self, trainer, pl_module):
            memo = pl_module.frozen_backbone.memo
            self.seen[trainer.current_epoch] = None if memo is None else (memo.hits, memo.misses)

    for augmentation, expect_memo in ((FlipRotate(0.0, 0.0, 0.0), True), (FlipRotate(0.5, 0.0, 0.0), False)):
        model, probe = make_model(method="eager"), Memo()
        dm = CrackDataModule(tiny_data, data_config=model.data_config, image_size=32, augmentation=augmentation,
                             loader={"batch_size": 19, "num_workers": 0}, split={"file": str(tmp_path / "splits.csv")})
        trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False,
                            default_root_dir=tmp_path, callbacks=[FreezeUnfreeze(unfreeze_at_epoch=2), probe])
        trainer.fit(model, dm)
        if not expect_memo:
            assert set(probe.seen.values()) == {None}
            continue
        images = len(dm.train_dataset) + len(dm.val_dataset)  # 19 + 2, one batch each (no last batch dropped)
        assert probe.seen[0] == (0, images), "epoch 0 (its validation included): each image computed once"
        assert probe.seen[1] == (images, images), "epoch 1: the head alone"
        assert probe.seen[2] is None, "dropped at the unfreeze"
