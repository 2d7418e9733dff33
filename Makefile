# labeltune — every target calls the same `labeltune` CLI (labeltune/cli.py) the notebook uses.
#   make demo                         tiny model on the bundled sample, CPU, a few minutes
#   make test                         fast test suite (what CI runs first)
#   make train MODEL=tiny DATA=data/sample.csv RUN=runs/mine [CONFIG=run.yaml]
#   make train MODEL=gemma2           (Gemma 2 9B 4-bit; GPU)   MODEL=llama3.1 (Llama 3.1 8B 4-bit)
#   make label RUN=runs/mine IN=posts.csv OUT=labelled.csv
#   make eval RUN=runs/mine
#   make export RUN=runs/mine FORMAT=adapter|merged16|gguf
#   make calibrate RUN=runs/mine      fit a temperature for label probabilities on the dev split
#   make bench                        labelling throughput / memory table (scripts/bench.py)
#   make sweep [CONFIG=configs/sweep.yaml]     grid of runs, best by dev F1, test for the best
#   make compare [CONFIG=configs/compare.yaml] generative vs classification head vs encoder vs baselines
#   make check-deps                   core + gpu extra resolve together (uv, metadata only)
#   make test-gpu-pins                fast suite against the gpu extra's library versions, on CPU
PY ?= python3
VENV ?= .venv
# Where labeltune runs:
#  - Colab, or any environment you installed labeltune into yourself (`pip install -e '.[gpu]'`):
#    that environment, as it is: no venv is made and torch is never reinstalled;
#  - otherwise $(VENV), made by `make install`: CUDA torch + the gpu extra where `nvidia-smi` sees a
#    GPU (one resolution, so torch fits unsloth's pin), the CPU torch wheel + dev tools elsewhere.
INSTALLED := $(shell cd / && $(PY) -c "import importlib.metadata as m; m.version('labeltune')" >/dev/null 2>&1 && echo yes)
USE_CURRENT := $(if $(wildcard $(VENV)/bin/python),,$(INSTALLED))
PYTHON := $(if $(USE_CURRENT),$(PY),$(VENV)/bin/python)
LT := $(PYTHON) -m labeltune.cli
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo yes)
# CPU wheel by default (found locally on the project machines; elsewhere use
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
TORCH ?= torch==2.13.0
MODEL ?= tiny
DATA ?= data/sample.csv
RUN ?= runs/$(MODEL)
CONFIG ?=
IN ?= data/new_posts.csv
OUT ?= $(RUN)/labelled.csv
CONFIG_FLAG := $(if $(CONFIG),--config $(CONFIG),)

.PHONY: install test test-slow test-gpu-pins env-gpu-pins demo train label eval export calibrate bench sweep compare check-deps clean

ifeq ($(USE_CURRENT),yes)
install:
	@echo "labeltune is installed in the environment of $(PY): using it as it is (no venv, torch kept)"
else
install: $(VENV)/.installed
endif

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
ifeq ($(GPU),yes)
	$(VENV)/bin/python -m pip install -q -e '.[dev,gpu]'
else
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
endif
	touch $@

test: install
	$(PYTHON) -m pytest -q -m "not slow and not gpu"

test-slow: install
	$(PYTHON) -m pytest -q -m "slow and not gpu"

demo: install
	rm -rf runs/demo
	$(LT) train --model tiny --data data/sample.csv --output runs/demo
	$(LT) evaluate --run runs/demo
	$(LT) label --run runs/demo --input data/new_posts.csv --output runs/demo/labelled.csv --overwrite
	@echo "== runs/demo: metrics.json, report.md, labelled.csv =="

train: install
	$(LT) train --model $(MODEL) --data $(DATA) --output $(RUN) $(CONFIG_FLAG)

eval: install
	$(LT) evaluate --run $(RUN)

label: install
	$(LT) label --run $(RUN) --input $(IN) --output $(OUT)

calibrate: install
	$(LT) calibrate --run $(RUN)

# Throughput and memory table (scripts/bench.py); trains the demo run first if it is missing.
bench: install
	test -f runs/demo/adapter/adapter_model.safetensors || $(MAKE) demo
	$(PYTHON) scripts/bench.py --run runs/demo

sweep: install
	$(LT) sweep --config $(or $(CONFIG),configs/sweep.yaml)

compare: install
	$(LT) compare --config $(or $(CONFIG),configs/compare.yaml)

export: install
	$(LT) export --run $(RUN) --format $(or $(FORMAT),merged16)

# Core deps + the `gpu` extra resolve together (metadata only, nothing downloaded or installed), and
# whether the torch already installed here (Colab's) would be kept by `pip install -e '.[gpu]'`.
check-deps: install
	$(PYTHON) -m pip install -q uv
	$(PYTHON) scripts/check_deps.py

# A second environment pinned to what the gpu extra resolves to (transformers, trl, peft, datasets,
# accelerate, bitsandbytes, ... from `scripts/check_deps.py --constraints`, so the pins follow the extra),
# with the CPU torch wheel instead of its CUDA torch and without unsloth (CUDA only). TRL 1.15 cannot
# train on CPU: the tests marked `train` run with the first TRL that can (an overlay on PYTHONPATH,
# every other library as pinned); all other tests run with the pinned TRL.
GPU_PINS ?= .venv-gpu-pins
TRL_OVERLAY := $(GPU_PINS)/trl-cpu-train

env-gpu-pins: $(GPU_PINS)/.installed

$(GPU_PINS)/.installed: pyproject.toml scripts/check_deps.py
	test -x $(GPU_PINS)/bin/python || $(PY) -m venv $(GPU_PINS)
	$(GPU_PINS)/bin/python -m pip install -q $(TORCH) uv
	$(GPU_PINS)/bin/python scripts/check_deps.py --constraints $(GPU_PINS)/gpu-pins.txt
	$(GPU_PINS)/bin/python -m pip install -q -c $(GPU_PINS)/gpu-pins.txt -e '.[dev]' pandas psutil
	rm -rf $(TRL_OVERLAY)
	$(GPU_PINS)/bin/python -m pip install -q --no-deps --target $(TRL_OVERLAY) "$$($(GPU_PINS)/bin/python scripts/check_deps.py --train-trl $(GPU_PINS)/gpu-pins.txt)"
	PYTHONPATH=$(TRL_OVERLAY) $(GPU_PINS)/bin/python -c "import trl; from trl import SFTTrainer; print('training TRL:', trl.__version__)"
	touch $@

# the fast suite (pinned TRL, then the training tests with the training TRL), then the 4-bit QLoRA
# end-to-end tests of the slow tier (tests/test_qlora.py): the code GPU users run, at their versions
test-gpu-pins: $(GPU_PINS)/.installed
	$(GPU_PINS)/bin/python -m pytest -q -m "not slow and not gpu and not train"
	PYTHONPATH=$(TRL_OVERLAY) $(GPU_PINS)/bin/python -m pytest -q -m "not slow and not gpu and train"
	PYTHONPATH=$(TRL_OVERLAY) $(GPU_PINS)/bin/python -m pytest -q -m "slow and train" tests/test_qlora.py

clean:
	rm -rf runs .pytest_cache
