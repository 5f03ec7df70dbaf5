# Set-up on a fresh machine is two commands:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: install demo test clean

install: $(STAMP)

# uv installs the pinned wheels in ~20 s; pip is the fallback where uv is unavailable.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.8 && $(VENV)/bin/uv pip install --python $(PY) -e '.[dev]' \
		|| $(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# Generates the synthetic dataset under data/synthetic if absent, trains MobileNetV2
# with freeze-then-unfreeze, tests the best checkpoint; the run lands in outputs/demo/.
demo: $(STAMP)
	$(PY) train.py experiment=demo

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

clean:
	rm -rf $(VENV) .pytest_cache
