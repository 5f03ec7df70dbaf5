"""The examples in the docstrings run as written (a module's ``>>>`` lines are part of its documentation)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["crack_lightning.data.settings", "crack_lightning.utils.checks", "crack_lightning.utils.parallel",
           "crack_lightning.evaluation.operating_point"]  # model_card: test_model_card


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0, result
