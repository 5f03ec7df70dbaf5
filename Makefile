# Set-up on a fresh machine is two commands:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: install demo shift-demo test test-browser browser data validate bench bench-finetune bench-peers gpu-wheels gpu-check clean

install: $(STAMP)

# uv installs the pinned wheels in ~20 s; pip is the fallback where uv is unavailable.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.8 && $(VENV)/bin/uv pip install --python $(PY) -e '.[dev,search,slurm,serve,app]' \
		|| $(PY) -m pip install -e '.[dev,search,slurm,serve,app]'
	# Byte-compile once: where PYTHONDONTWRITEBYTECODE is set (as on our machines) every
	# process would otherwise recompile torch and lightning from source -- 24 s instead of
	# 10 s to import lightning here, paid by every test subprocess and every run. A few
	# files written for newer Pythons (torch's py312 test helpers) cannot compile and are
	# never imported: compileall's status is ignored, it only saves time.
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

# Generates the synthetic dataset under data/synthetic if absent, trains MobileNetV2
# with freeze-then-unfreeze, tests the best checkpoint; the run lands in outputs/demo/.
demo: $(STAMP)
	$(PY) train.py experiment=demo

# Will it hold at another site? The demo recipe trained on the synthetic concrete and tested on three other
# synthetic surfaces (eval.test_sets), then recalibrated on 40 + 40 labelled images of each surface and
# tested on 200 + 200 others at that point. Everything lands in outputs/shift/<time>/ (README, "Will it hold
# at your site?").  make shift-demo SITES="painted"
SITES ?= asphalt painted low_light
shift-demo: $(STAMP)
	@set -e; run=outputs/shift/$$(date +%Y-%m-%d_%H-%M-%S); sets=""; \
	for s in $(SITES); do \
		$(PY) -m crack_lightning.cli.synth --out data/sites/$$s/sample --style $$s --per-class 40 --seed 1; \
		$(PY) -m crack_lightning.cli.synth --out data/sites/$$s/rest --style $$s --per-class 200 --seed 2; \
		sets="$$sets$${sets:+, }$$s: data/sites/$$s/rest"; \
	done; \
	$(PY) train.py experiment=demo eval.domain=concrete "eval.test_sets={$$sets}" hydra.run.dir=$$run/train; \
	for s in $(SITES); do \
		$(PY) recalibrate.py ckpt=$$run/train/checkpoints/best.ckpt data.root=data/sites/$$s/sample name=$$s \
			eval.target_recall=0.9 hydra.run.dir=$$run/recalibrate_$$s; \
		$(PY) evaluate.py ckpt=$$run/recalibrate_$$s/best-$$s.ckpt operating_point=$$s data.root=data/sites/$$s/rest \
			hydra.run.dir=$$run/evaluate_$$s; \
	done; \
	$(PY) -m crack_lightning.cli.shift_report $$run

# The real dataset (Mendeley, 233 MB RAR4): resumable download, SHA-256 check, extraction
# to data/concrete_crack and a dataset card.  Overrides: make data ARGS="source.url=<mirror>"
data: $(STAMP)
	$(PY) -m crack_lightning.cli.data $(ARGS)

# Check an ImageFolder: broken files, duplicates, near-duplicates, split leaks.
#   make validate ROOT=data/concrete_crack ARGS="--splits outputs/<run>/splits.csv"
ROOT ?= data/concrete_crack
validate: $(STAMP)
	$(PY) -m crack_lightning.cli.validate $(ROOT) $(ARGS)

# Framework vs plain PyTorch loop, data path and inference throughput per backbone;
# appends a table to BENCHMARKS.md.  Run it on a quiet machine.  make bench ARGS="--image-size 224"
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(ARGS)

# A whole MobileNetV2 fine-tune through the real task, timed: prepare / fit (validation
# included) / after fit.  The GPU target (<= 90 s fit):
#   make bench-finetune ARGS="--per-class 20000 --image-size 224 --batch-size 256 --epochs 10"
bench-finetune: $(STAMP)
	$(PY) benchmarks/finetune.py $(ARGS)

# Our frozen and fine-tune phases against the seeds' Keras recipe (TensorFlow CPU, installed into
# its own virtualenv under data/bench on first use) and the plain loop, in one run; appends the
# ratios to BENCHMARKS.md.  Run it on a quiet machine.  A dry run:
#   make bench-peers ARGS="--train-images 160 --frozen-epochs 1 --finetune-epochs 1"
bench-peers: $(STAMP)
	test -x data/bench/peers-venv/bin/python || $(PYTHON) -m venv data/bench/peers-venv
	data/bench/peers-venv/bin/python -m pip install -q -r benchmarks/peers-requirements.txt
	$(PY) benchmarks/peers.py --keras-python data/bench/peers-venv/bin/python $(ARGS)

# The wheels a bare CUDA machine lacks (benchmarks/gpu-requirements.txt), pure Python, into data/gpu-wheels/
# (git-ignored, ~1.5 MB): the device run carries that folder (docs/gpu.md). pip wheel, not pip download:
# antlr4-python3-runtime 4.9.3 exists as an sdist only; a wheel tagged for this Python would not install there.
GPU_WHEELS := data/gpu-wheels
gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip wheel -q --no-deps -w $(GPU_WHEELS) -r benchmarks/gpu-requirements.txt
	@for w in $(GPU_WHEELS)/*.whl; do case $$w in *-none-any.whl) ;; \
		*) echo "gpu-wheels: $$w is built for this Python; the GPU machine needs one for 3.12 (pip download --python-version 3.12)" >&2; exit 1;; esac; done
	@du -sh $(GPU_WHEELS)

# Issue 21's measurements of the CUDA path on a GPU machine, into $OUT or outputs/gpu_check/<time>
# (benchmarks/gpu_check.sh, docs/gpu.md); on the GPU machine it needs no .venv.  Here:  make gpu-check ARGS=--dry-run
gpu-check:
	bash benchmarks/gpu_check.sh $(ARGS)

# One intra-op thread per process: the workers (and the train.py processes they start) already
# keep the cores busy; with torch's default of one thread per core they oversubscribe them --
# 4 min 41 s against 3 min 32 s on 2 cores, and a third more CPU time.
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not browser" tests

# The app in a real browser: Debian's chromium and chromedriver (installed here when missing, as root or
# with sudo; never downloaded at run time), headless. Saves the page to $(SCREENSHOT) (the README's).
#   make test-browser CKPT=outputs/demo/runs/<run>/checkpoints/best.ckpt SCREENSHOT=docs/inspector.png
SCREENSHOT ?= outputs/browser/inspector.png
test-browser: $(STAMP) browser
	CRACK_BROWSER_REQUIRED=1 CRACK_SCREENSHOT=$(abspath $(SCREENSHOT)) CRACK_APP_CKPT=$(CKPT) \
		OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m browser -p no:xdist tests

browser:
	@command -v chromium > /dev/null && command -v chromedriver > /dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
			chromium chromium-driver; }

clean:
	rm -rf $(VENV) .pytest_cache
