"""OmegaConf resolvers the configs in conf/ use; registered when crack_lightning is imported."""

from __future__ import annotations

import os
import secrets

from omegaconf import OmegaConf


def _cwd() -> str:
    """``${cwd:}``: the folder the command was started in (``hydra.job.chdir`` is false).
    ``${hydra:runtime.cwd}`` is not set yet when Hydra 1.3 resolves ``hydra.sweep.dir``,
    so a multirun whose paths used it stopped before its first job (Hydra issue 2247)."""
    return os.getcwd()


def _run_dir(resume: str | None, new_run_dir: str) -> str:
    """``hydra.run.dir``: the resumed run's folder, else a new one. (``oc.select`` cannot
    do this: it returns the default only for a *missing* key, and ``resume`` is null.)"""
    return new_run_dir if resume is None else resume


def _resume_subdir(resume: str | None, now: str) -> str:
    """``hydra.output_subdir``: a resumed run keeps the ``.hydra/`` of its first start (the
    config it is checked against) and gets ``.hydra/resumed_<time>/`` for its own."""
    return ".hydra" if resume is None else f".hydra/resumed_{now}"


def _run_id() -> str:
    """``${run_id:}``: six random hex digits after the time in run and sweep folder names, so two
    runs started in the same second get two folders (they shared one and crashed). Cached like
    ``${now:}``: Hydra copies the cache into each job's config, so a job, its DDP ranks and a
    submitit job resolve the same folder."""
    return secrets.token_hex(3)


for _name, _resolver in (("cwd", _cwd), ("run_dir", _run_dir), ("resume_subdir", _resume_subdir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", _run_id, use_cache=True)
