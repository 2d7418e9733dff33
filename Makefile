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
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default (found locally on the project machines; elsewhere use
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
# On a GPU box / Colab: make install TORCH=torch  (or keep the preinstalled torch, see README).
TORCH ?= torch==2.13.0
MODEL ?= tiny
DATA ?= data/sample.csv
RUN ?= runs/$(MODEL)
CONFIG ?=
IN ?= data/new_posts.csv
OUT ?= $(RUN)/labelled.csv
CONFIG_FLAG := $(if $(CONFIG),--config $(CONFIG),)

.PHONY: install test test-slow demo train label eval export calibrate bench sweep compare check-deps clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-slow: install
	$(BIN)/python -m pytest -q -m "slow and not gpu"

demo: install
	rm -rf runs/demo
	$(BIN)/labeltune train --model tiny --data data/sample.csv --output runs/demo
	$(BIN)/labeltune evaluate --run runs/demo
	$(BIN)/labeltune label --run runs/demo --input data/new_posts.csv --output runs/demo/labelled.csv --overwrite
	@echo "== runs/demo: metrics.json, report.md, labelled.csv =="

train: install
	$(BIN)/labeltune train --model $(MODEL) --data $(DATA) --output $(RUN) $(CONFIG_FLAG)

eval: install
	$(BIN)/labeltune evaluate --run $(RUN)

label: install
	$(BIN)/labeltune label --run $(RUN) --input $(IN) --output $(OUT)

calibrate: install
	$(BIN)/labeltune calibrate --run $(RUN)

# Throughput and memory table (scripts/bench.py); trains the demo run first if it is missing.
bench: install
	test -f runs/demo/adapter/adapter_model.safetensors || $(MAKE) demo
	$(BIN)/python scripts/bench.py --run runs/demo

sweep: install
	$(BIN)/labeltune sweep --config $(or $(CONFIG),configs/sweep.yaml)

compare: install
	$(BIN)/labeltune compare --config $(or $(CONFIG),configs/compare.yaml)

export: install
	$(BIN)/labeltune export --run $(RUN) --format $(or $(FORMAT),merged16)

# Core deps + the `gpu` extra resolve together (metadata only, nothing downloaded or installed).
check-deps: install
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra gpu --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --quiet -o - | grep -E '^(torch|transformers|trl|datasets|peft|unsloth|bitsandbytes)=='

clean:
	rm -rf runs .pytest_cache
