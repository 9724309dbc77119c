# libra-rcnn: every target sets up .venv first when it is missing (or half-installed).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := train,onnx,fast-eval,dev

CONFIG ?= configs/tiny_faster_rcnn.yaml
WORK_DIR ?= runs/$(basename $(notdir $(CONFIG)))
DATA_DIR ?= data/synthetic
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow data check-data train eval export bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-pinned.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-pinned.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The built-in synthetic COCO-format dataset (generated, never committed).
data: $(DATA_DIR)/annotations/instances_val.json

$(DATA_DIR)/annotations/instances_val.json: | $(STAMP)
	$(PY) -m training.data.synthetic --out $(DATA_DIR) --train 400 --val 100 --seed 0

check-data: data
	$(PY) -m training.data.validate --ann $(DATA_DIR)/annotations/instances_train.json --images $(DATA_DIR)/train
	$(PY) -m training.data.validate --ann $(DATA_DIR)/annotations/instances_val.json --images $(DATA_DIR)/val

demo: data
	$(PY) -m training.demo --work-dir runs/demo $(ARGS)

train: data
	$(PY) -m training.train --config $(CONFIG) --work-dir $(WORK_DIR) $(ARGS)

eval: data
	$(PY) -m training.evaluate --config $(CONFIG) --checkpoint $(WORK_DIR)/model_final.pth --work-dir $(WORK_DIR) $(ARGS)

# make export CONFIG=... CHECKPOINT=... [OUT=...]: one ONNX file (+ model.json) for ONNX Runtime / TensorRT.
CHECKPOINT ?= $(WORK_DIR)/model_final.pth
OUT ?= $(dir $(CHECKPOINT))export
export: | $(STAMP)
	$(PY) -m export.onnx_export --checkpoint $(CHECKPOINT) --config $(CONFIG) --out $(OUT) $(ARGS)

# make bench [BENCH_ARGS="..."]: latency + COCO AP of every model on every available backend and the
# torchvision peer, into bench/results.{json,md} and bench/latency.png (python -m runtime.bench.suite --help).
BENCH_ARGS ?=
bench: data
	$(PY) -m runtime.bench.suite --data $(DATA_DIR) --out bench $(BENCH_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf runs data/synthetic .pytest_cache
