"""Wrong types and ranges in the config: one line naming the key, before any data is touched."""

from __future__ import annotations

import pytest

from crack_lightning import CrackLightningError, find_user_error
from crack_lightning.config_checks import check_types
from tests.conftest import compose_cfg, refused, run_train_py


def test_the_shipped_configs_pass(tmp_path, tiny_data):
    for overrides in ([], ["experiment=demo"], ["experiment=keras_seed"], ["finetune=frozen"]):
        check_types(compose_cfg(tmp_path, tiny_data, overrides))


@pytest.mark.parametrize("override, message", [
    ("model.lr=abc", "model.lr='abc' (expected a number > 0)"),
    ("model.lr=-0.1", "model.lr=-0.1"),
    ("trainer.max_epochs=true", "trainer.max_epochs=True"),
    ("data.image_size=[32]", "data.image_size=[32]"),
    ("eval.target_recall=1.5", "eval.target_recall=1.5 (expected a number in (0, 1])"),
    ("eval.prevalence=1", "eval.prevalence=1 (expected null or a crack rate in (0, 1))"),
    ("model.drop_rate=1", "model.drop_rate=1"),
    ("trainer.compile=maybe", "trainer.compile='maybe' (expected false, true or inference)"),
])
def test_a_bad_value_is_named(tmp_path, tiny_data, override, message):
    with pytest.raises(CrackLightningError, match="Bad setting") as err:
        check_types(compose_cfg(tmp_path, tiny_data, [override]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_problem_is_listed_at_once(tmp_path, tiny_data):
    with pytest.raises(CrackLightningError) as err:
        check_types(compose_cfg(tmp_path, tiny_data, ["model.lr=abc", "eval.target_recall=2"]))
    assert "model.lr" in str(err.value) and "eval.target_recall" in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("data.loader.batch_size=0", "data.loader.batch_size=0: a whole number >= 1."),
    ("data.loader.batch_size=8.5", "data.loader.batch_size=8.5: a whole number >= 1."),
    ("data.loader.num_workers=abc", "data.loader.num_workers=abc: auto or a whole number >= 0."),
    ("data.loader.pin_memory=maybe", "data.loader.pin_memory=maybe: choose auto, true or false."),
    ("data.split.strategy=grouped2", "data.split.strategy=grouped2: choose grouped, random or test."),
    ("data.split.fractions=[0.8,0.1,0.2]", "data.split.fractions=[0.8, 0.1, 0.2]: give three positive fractions"),
    ("data.split.grouping.ratio=0", "data.split.grouping.ratio=0: a number in (0, 1]."),
    ("data.screening.on_bad_file=ignore", "data.screening.on_bad_file=ignore: choose skip or error."),
    ("data.screening.min_side=0", "data.screening.min_side=0: a whole number >= 1."),
    ("data.cache.enabled=sometimes", "data.cache.enabled=sometimes: choose auto, true or false."),
    ("data.cache.dir=null", None),  # auto without a folder: no decoded cache, no error
])
def test_a_bad_data_setting_is_named_by_its_settings(tmp_path, tiny_data, override, message):
    """The data groups are typed settings that check themselves: train.py's check_config makes
    them before torch is imported, and the data module again when it is built (a library user):
    both say one line naming the full key, before any data is read."""
    from hydra.utils import instantiate

    from crack_lightning.config_checks import check_config

    cfg = compose_cfg(tmp_path, tiny_data, [override])
    data_config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    if message is None:
        check_config(cfg)
        assert instantiate(cfg.data, data_config=data_config).cache.used is False
        return
    with pytest.raises(CrackLightningError) as early:
        check_config(cfg)
    assert str(early.value).startswith(message) and "\n" not in str(early.value), early.value
    with pytest.raises(Exception) as err:  # Hydra wraps it; train.py's one line finds it (find_user_error)
        instantiate(cfg.data, data_config=data_config)
    error = str(find_user_error(err.value))
    assert error.startswith(message) and "\n" not in error, error
    assert not (tmp_path / "run" / "splits.csv").exists() and not (tmp_path / "data").exists()


def test_train_stops_on_a_bad_value_before_touching_data(tmp_path, tiny_data):
    from crack_lightning.train import train

    with pytest.raises(CrackLightningError, match="model.lr='abc'"):
        train(compose_cfg(tmp_path, tiny_data, ["model.lr=abc"]))
    assert not (tmp_path / "run" / "splits.csv").exists() and not (tmp_path / "data").exists()


def test_the_flat_data_keys_of_before_are_told_their_new_names(tmp_path, tiny_data):
    """`data.batch_size=8` (gone: Hydra advised `+data.batch_size`) and `data.cache=false` (now a
    group) as a user of the flat data config types them: one line with the new spelling."""
    base = ["debug=fast", f"data.root={tiny_data}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}"]
    refused(run_train_py([*base, "data.batch_size=8"]), "data.batch_size is now data.loader.batch_size",
            "write data.loader.batch_size=8")
    refused(run_train_py([*base, "data.cache=false"]), "data.cache is a group", "write data.cache.enabled=false")
    assert not list(tmp_path.rglob("splits.csv"))
