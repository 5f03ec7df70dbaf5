"""Trainer settings that depend on the machine: precision, cuDNN, matmul precision; a quiet console;
on a cluster, the stop at a batch boundary on preemption (:mod:`crack_lightning.trainer.cluster`)."""

from __future__ import annotations

import torch

__all__ = ["build_trainer", "compile_if_asked", "runtime_kwargs", "resolve_precision"]


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str | int:
    """``"auto"``: bf16 mixed on CUDA GPUs that support it (no GradScaler needed),
    fp16 mixed with a GradScaler on older GPUs, full fp32 on the CPU (where mixed
    precision is slower). Anything else is passed through to Lightning."""
    if precision != "auto":
        return precision
    if _uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def runtime_kwargs(trainer_cfg) -> dict:
    """Keyword arguments for ``lightning.Trainer`` resolved for this machine."""
    accelerator = trainer_cfg.get("accelerator", "auto")
    cuda = _uses_cuda(accelerator)
    if cuda:
        # TF32 matmuls on Ampere and newer; no effect elsewhere
        torch.set_float32_matmul_precision("high")
    benchmark = trainer_cfg.get("benchmark", "auto")
    return {
        "precision": resolve_precision(trainer_cfg.get("precision", "auto"), accelerator),
        # fixed input sizes: let cuDNN pick the fastest kernels; None leaves torch's default
        "benchmark": (True if cuda else None) if benchmark == "auto" else benchmark,
    }


def build_trainer(trainer_cfg, **kwargs):
    """The ``lightning.Trainer`` of a ``trainer`` config, resolved for this machine.

    Keys that are ours, not the Trainer's (``compile``, ``compile_options``,
    ``frozen_backbone``: :func:`compile_if_asked` applies them to the model), are left
    out; ``kwargs`` override the config. Lightning's messages that nobody can act on are
    silenced first (:mod:`crack_lightning.trainer.console`). On SLURM or in a submitit job
    the fit stops at a batch boundary on the preemption signal and Lightning's own SLURM
    requeue is off (:func:`crack_lightning.trainer.cluster.cluster_kwargs`)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from crack_lightning.trainer.cluster import cluster_kwargs
    from crack_lightning.trainer.console import quiet_lightning

    quiet_lightning()  # before the Trainer logs its first line
    config = OmegaConf.to_container(trainer_cfg, resolve=True)
    config.pop("compile", None)
    config.pop("compile_options", None)
    config.pop("frozen_backbone", None)
    return instantiate(config, **cluster_kwargs({**runtime_kwargs(trainer_cfg), **kwargs}))


def compile_if_asked(trainer_cfg, model) -> None:
    """``trainer.compile=true``: compile the model's backbone in place (``nn.Module.compile``:
    state_dict keys, and so checkpoints, stay those of the eager model) with
    ``trainer.compile_options`` (default ``dynamic: false``: batch shapes are fixed, the
    training loader drops its last partial batch). ``trainer.compile=inference``: only the
    backbone's calls without gradient (frozen phase, evaluation; see
    ``CrackClassifier.compile_inference``). ``trainer.frozen_backbone``: how the frozen
    phase runs the backbone (:mod:`crack_lightning.models.frozen`); its copy, where one
    is made, serves the frozen calls ahead of ``compile=inference``'s compiled backbone;
    ``compile=true`` compiles every call, so ``auto`` then leaves the frozen phase to it."""
    mode = trainer_cfg.get("compile")  # its values are checked by config_checks
    if hasattr(model, "frozen_backbone"):  # (a model of one's own may have none)
        from crack_lightning.models.frozen import FrozenBackbone

        method = trainer_cfg.get("frozen_backbone", "auto")
        model.frozen_backbone = FrozenBackbone("eager" if mode is True and method == "auto" else method)
    if not mode:
        return
    options = dict(trainer_cfg.get("compile_options") or {"dynamic": False})
    if mode == "inference":
        model.compile_inference(**options)
    else:
        model.backbone.compile(**options)
