"""Hyperparameter search: `python train.py -m hparams_search=optuna` runs Hydra's Optuna sweeper
over the real train.py; the sweeper's best trial is the best of the jobs' returned values.

Needs the `search` extra (hydra-optuna-sweeper, optuna<3, SQLAlchemy<2), which `make install` installs.
"""

from __future__ import annotations

import csv
import importlib
import json
import math

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF, run_train_py

# `make install` installs the search extra; without it these tests fail rather than skip
sweeper_impl = importlib.import_module("hydra_plugins.hydra_optuna_sweeper._impl")

# the search space of conf/hparams_search/optuna.yaml, by the key each trial overrides
SEARCHED = {"model.lr", "finetune.backbone_lr_ratio", "finetune.unfreeze_at_epoch", "augmentation", "backbone"}


def compose_search(overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=["hparams_search=optuna", *overrides], return_hydra_config=True)


def test_search_space_names_real_keys_and_direction_follows_monitor_mode():
    """Every searched key exists in the train config (a renamed key would otherwise be added
    silently or fail every trial), every range parses, and the direction follows monitor_mode."""
    cfg = compose_search()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed is not None and sweeper.n_jobs == 1 and sweeper.storage is None
    assert sweeper.direction == "minimize" and cfg.monitor_mode == "min"
    assert compose_search(["monitor=val/auroc", "monitor_mode=max"]).hydra.sweeper.direction == "maximize"

    params = dict(sweeper.params)
    assert set(params) == SEARCHED
    distributions, fixed = sweeper_impl.create_params_from_overrides([f"{k}={v}" for k, v in params.items()])
    assert set(distributions) == SEARCHED and not fixed
    for key in SEARCHED:
        if (CONF / key).is_dir():  # a config group: every choice is one of its files
            assert set(distributions[key].choices) <= {p.stem for p in (CONF / key).glob("*.yaml")}, key
        else:
            assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None, key
    # train.py refuses unfreeze_at_epoch >= max_epochs: such a trial would fail
    assert distributions["finetune.unfreeze_at_epoch"].high < cfg.trainer.max_epochs
    assert distributions["model.lr"].low > 0 and distributions["finetune.backbone_lr_ratio"].low > 0


def fast_trials(tmp_path, data_root) -> list[str]:
    """Seconds per trial: tiny images, 2 epochs, no test and no figures."""
    return [
        "debug=fast", "trainer.max_epochs=2", "test=false", "logger.tensorboard=null",
        "callbacks.operating_point=null", "callbacks.augmentation_preview=null",
        f"data.root={data_root}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}",
    ]


def test_optuna_search_through_train_py_survives_failed_trials(tmp_path, tiny_data):
    """Four trials over a space that includes a refused setting (unfreeze epoch >= max_epochs):
    the failed trials count as the worst value (+inf for val/loss), the rest still run, the
    best is the finished trial with the lowest value, and the command exits 1 because
    something failed."""
    sweep = tmp_path / "sweep"
    result = run_train_py([
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}",
        # narrow the space from the command line: a plain value takes a key out of the search,
        # a sweep replaces its range (the sweeper appends the command line to its params)
        "backbone=custom_cnn", "backbone.pretrained=false",
        "model.lr=tag(log,interval(1e-4,1e-2))", "finetune.unfreeze_at_epoch=choice(0,1,5)",
        *fast_trials(tmp_path, tiny_data),
    ])
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    assert "Directions: ['minimize']" in output  # monitor_mode: min

    # four jobs, each recorded with the overrides it tried
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == ["0", "1", "2", "3"], "every trial ran"
    records, tried = {}, {}
    for job in jobs:
        records[job.name] = json.loads((job / "job.json").read_text())
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert overrides["backbone"] == "custom_cnn"  # the fixed value, not a choice of the space
        tried[job.name] = {k: v for k, v in overrides.items() if k in SEARCHED - {"backbone"}}
        assert set(tried[job.name]) == SEARCHED - {"backbone"}
        assert 1e-4 <= float(tried[job.name]["model.lr"]) <= 1e-2  # the command line's range, not the config's
    assert len({tuple(sorted(t.items())) for t in tried.values()}) == 4, tried  # four distinct trials

    failed = {job for job, r in records.items() if r["status"] == "failed"}
    values = {job: r["return_value"] for job, r in records.items() if r["status"] == "completed"}
    assert failed and len(values) >= 2, records  # the seeded sampler tries both kinds
    assert failed | set(values) == set(records)
    for job in failed:
        assert tried[job]["finetune.unfreeze_at_epoch"] == "5" and records[job]["return_value"] is None
        assert "unfreeze_at_epoch=5" in records[job]["error"]
    for job, value in values.items():
        assert tried[job]["finetune.unfreeze_at_epoch"] in ("0", "1")
        assert isinstance(value, float) and math.isfinite(value), records[job]
    assert len(set(values.values())) > 1, values

    # optimization_results.yaml: the best trial is the finished job with the lowest value (mode min)
    # OmegaConf.load: a value written as 1e-05 is a float (PyYAML would read a string)
    results = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    assert results["name"] == "optuna"
    best_job = min(values, key=values.get)
    assert results["best_value"] == min(values.values()) != max(values.values())
    assert set(results["best_params"]) == SEARCHED - {"backbone"}
    for key, value in results["best_params"].items():
        assert str(value) == tried[best_job][key] or float(value) == float(tried[best_job][key]), key

    # summary.csv (SweepSummary callback) agrees: same best job first, the failures last, and
    # each job's best val/loss from its metrics.csv is the value it returned to the sweeper
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed"] * len(values) + ["failed"] * len(failed)
    assert rows[0]["job"] == best_job
    for row in rows[:len(values)]:
        assert float(row["best val/loss"]) == pytest.approx(values[row["job"]], rel=1e-5)
    assert (sweep / "summary.md").is_file()
