"""Freeze-then-unfreeze semantics, exercised through a real Lightning Trainer."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch import nn

from crack_lightning.backbones import create_backbone
from crack_lightning.callbacks import FreezeUnfreeze
from crack_lightning.data import CrackDataModule
from crack_lightning.models import CrackClassifier
from crack_lightning.models.schedulers import warmup_cosine

LR = 1e-2


def make_model(name: str = "mobilenetv2_100") -> CrackClassifier:
    torch.manual_seed(0)
    return CrackClassifier(
        create_backbone(name),
        optimizer=partial(torch.optim.AdamW, weight_decay=0.0),
        scheduler=partial(warmup_cosine, warmup_epochs=0, min_lr_ratio=0.1),
        lr=LR,
    )


def make_data(model: CrackClassifier, root, tmp_path) -> CrackDataModule:
    return CrackDataModule(
        root, data_config=model.data_config, image_size=32, loader={"batch_size": 8, "num_workers": 0},
        split={"file": str(tmp_path / "splits.csv")},
    )


def make_trainer(max_epochs: int, callbacks: list, tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_epochs=max_epochs, callbacks=callbacks, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path, **kwargs,
    )


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Probe(L.Callback):
    """Records, per epoch, what the fine-tuning schedule did."""

    def __init__(self):
        self.epochs: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            bns = batchnorms(pl_module.backbone)
            self.epochs[trainer.current_epoch] = {
                "bn_training": [m.training for m in bns],
                "requires_grad": [p.requires_grad for p in pl_module.backbone.parameters()],
                "start_state": snapshot(pl_module.backbone),
            }

    def on_train_epoch_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.epochs[trainer.current_epoch].update(
            end_state=snapshot(pl_module.backbone),
            groups=[(g["lr"], g.get("initial_lr"), len(g["params"])) for g in optimizer.param_groups],
            trainable=trainer.callback_metrics.get("train/trainable_params"),
        )


def changed(a: dict, b: dict, keys=None) -> set[str]:
    return {k for k in (keys or a) if not torch.equal(a[k], b[k])}


def test_frozen_backbone_takes_no_gradient_and_keeps_batchnorm_statistics(tiny_data, tmp_path):
    model = make_model()
    probe = Probe()
    trainer = make_trainer(2, [FreezeUnfreeze(unfreeze_at_epoch=None), probe], tmp_path)
    head_before = snapshot(model.head)
    trainer.fit(model, make_data(model, tiny_data, tmp_path))

    for epoch in (0, 1):
        rec = probe.epochs[epoch]
        assert not any(rec["requires_grad"]), "frozen backbone parameters must not require grad"
        assert not any(rec["bn_training"]), "frozen BatchNorm layers must run in eval mode"
        # parameters *and* BatchNorm running statistics are exactly as they were
        assert changed(rec["start_state"], rec["end_state"]) == set()
        assert len(rec["groups"]) == 1
    assert all(p.grad is None for p in model.backbone.parameters())
    assert changed(head_before, snapshot(model.head)), "the head must train"
    trainable = sum(p.numel() for p in model.head.parameters())
    assert probe.epochs[1]["trainable"] == trainable


def test_unfreeze_adds_backbone_group_driven_by_the_scheduler(tiny_data, tmp_path):
    model = make_model()
    probe = Probe()
    finetune = FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.1)
    trainer = make_trainer(3, [finetune, probe], tmp_path)
    trainer.fit(model, make_data(model, tiny_data, tmp_path))

    e0, e1, e2 = probe.epochs[0], probe.epochs[1], probe.epochs[2]
    assert len(e0["groups"]) == 1 and not any(e0["requires_grad"])
    assert all(e1["requires_grad"]) and all(e1["bn_training"])
    n_backbone = len(list(model.backbone.parameters()))
    (head_lr, head_initial, _), (bb_lr, bb_initial, bb_count) = e2["groups"]
    assert bb_count == n_backbone, "the whole backbone joins as one new group"
    assert bb_initial == pytest.approx(LR * 0.1)
    # the cosine schedule has decayed the head's lr and drives the backbone group alike
    assert head_lr < head_initial
    assert bb_lr / bb_initial == pytest.approx(head_lr / head_initial)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert len(scheduler.lr_lambdas) == len(scheduler.base_lrs) == 2
    # once unfrozen, weights and BatchNorm statistics train
    bn_keys = [k for k in e1["start_state"] if "running_mean" in k]
    assert changed(e1["start_state"], e1["end_state"], bn_keys)
    assert e2["trainable"] == sum(p.numel() for p in model.parameters())
    assert trainer.fit_loop.min_epochs == 2, "early stopping must not end the run while frozen"


def test_unfreeze_last_stages_only(tiny_data, tmp_path):
    model = make_model("custom_cnn")  # four conv/pool stages
    probe = Probe()
    finetune = FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.5, unfreeze_stages=1)
    trainer = make_trainer(2, [finetune, probe], tmp_path)
    trainer.fit(model, make_data(model, tiny_data, tmp_path))

    stages = model.backbone.stages
    assert all(p.requires_grad for p in stages[3].parameters())
    assert not any(p.requires_grad for s in stages[:3] for p in s.parameters())
    groups = trainer.optimizers[0].param_groups
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in stages[3].parameters()}
    # the still-frozen stages neither learn nor update BatchNorm statistics
    e1 = probe.epochs[1]
    frozen_keys = [k for k in e1["start_state"] if k.split(".")[1] in "012"]
    assert changed(e1["start_state"], e1["end_state"], frozen_keys) == set()
    assert changed(e1["start_state"], e1["end_state"], [k for k in e1["start_state"] if k.startswith("stages.3")])
    bn_modes = dict(zip([n for n, m in model.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)], e1["bn_training"]))
    assert not any(mode for name, mode in bn_modes.items() if name.startswith(("stages.0", "stages.1", "stages.2")))
    assert all(mode for name, mode in bn_modes.items() if name.startswith("stages.3"))


def test_full_finetune_trains_backbone_from_first_step(tiny_data, tmp_path):
    model = make_model("custom_cnn")
    probe = Probe()
    trainer = make_trainer(1, [FreezeUnfreeze(unfreeze_at_epoch=0, backbone_lr_ratio=1.0), probe], tmp_path)
    trainer.fit(model, make_data(model, tiny_data, tmp_path))
    e0 = probe.epochs[0]
    assert all(e0["requires_grad"]) and all(e0["bn_training"])
    assert len(e0["groups"]) == 2 and e0["groups"][1][1] == pytest.approx(LR)


def test_resume_after_unfreeze_epoch_keeps_backbone_unfrozen(tiny_data, tmp_path):
    """Lightning's BackboneFinetuning re-freezes here (Lightning issue 21901)."""
    model = make_model()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(2, [FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.1), ckpt], tmp_path)
    first.fit(model, make_data(model, tiny_data, tmp_path))
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_file()

    resumed = make_model()
    probe = Probe()
    second = make_trainer(3, [FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.1), probe], tmp_path)
    second.fit(resumed, make_data(resumed, tiny_data, tmp_path), ckpt_path=str(last))

    assert list(probe.epochs) == [2], "resume continues at epoch 2"
    e2 = probe.epochs[2]
    assert all(e2["requires_grad"]), "backbone must stay unfrozen after resuming"
    assert all(e2["bn_training"])
    groups = e2["groups"]
    assert len(groups) == 2, "the restored backbone group is reused, not added again"
    assert groups[1][1] == pytest.approx(LR * 0.1)
    assert groups[1][0] / groups[1][1] == pytest.approx(groups[0][0] / groups[0][1])
    weight_keys = [k for k in e2["start_state"] if k.endswith("weight")]
    assert changed(e2["start_state"], e2["end_state"], weight_keys), "the backbone trains after resuming"
