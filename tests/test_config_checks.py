"""Wrong types and ranges in the config: one line naming the key, before any data is touched."""

from __future__ import annotations

import pytest

from crack_lightning import CrackLightningError
from crack_lightning.config_checks import check_types
from tests.conftest import compose_cfg


def test_the_shipped_configs_pass(tmp_path, tiny_data):
    for overrides in ([], ["experiment=demo"], ["experiment=keras_seed"], ["finetune=frozen"]):
        check_types(compose_cfg(tmp_path, tiny_data, overrides))


@pytest.mark.parametrize("override, message", [
    ("model.lr=abc", "model.lr='abc' (expected a number > 0)"),
    ("model.lr=-0.1", "model.lr=-0.1"),
    ("data.batch_size=0", "data.batch_size=0 (expected a whole number >= 1)"),
    ("data.batch_size=8.5", "data.batch_size=8.5"),
    ("trainer.max_epochs=true", "trainer.max_epochs=True"),
    ("data.image_size=[32]", "data.image_size=[32]"),
    ("eval.target_recall=1.5", "eval.target_recall=1.5 (expected a number in (0, 1])"),
    ("model.drop_rate=1", "model.drop_rate=1"),
    ("trainer.compile=maybe", "trainer.compile='maybe' (expected false, true or inference)"),
])
def test_a_bad_value_is_named(tmp_path, tiny_data, override, message):
    with pytest.raises(CrackLightningError, match="Bad setting") as err:
        check_types(compose_cfg(tmp_path, tiny_data, [override]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_problem_is_listed_at_once(tmp_path, tiny_data):
    with pytest.raises(CrackLightningError) as err:
        check_types(compose_cfg(tmp_path, tiny_data, ["model.lr=abc", "data.batch_size=-1"]))
    assert "model.lr" in str(err.value) and "data.batch_size" in str(err.value)


def test_train_stops_on_a_bad_value_before_touching_data(tmp_path, tiny_data):
    from crack_lightning.train import train

    with pytest.raises(CrackLightningError, match="model.lr='abc'"):
        train(compose_cfg(tmp_path, tiny_data, ["model.lr=abc"]))
    assert not (tmp_path / "run" / "splits.csv").exists() and not (tmp_path / "data").exists()
