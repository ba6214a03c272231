# haloscope: every target is a thin call of one CLI verb, `haloscope <verb>`.
# On first use the targets create .venv and install the pinned dependencies
# (requirements.lock: runtime; requirements-test.lock: tests and dev tools), so on a fresh
# clone `make demo` and `make test` are all you type. Into an existing CUDA PyTorch (a site
# module, an NGC container) install with `pip install -e .` instead: see docs/cluster.md.
# Override any variable on the command line, e.g. `make shards DATA=/path/to/dr10 WORKERS=16`.

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
HALO       := $(BIN)/haloscope
STAMP      := $(VENV)/.installed
# a venv with the runtime lock only, for `make runtime-check`
RUNTIME_VENV ?= .venv-runtime

# hive-partitioned parquet root (region_split=train|val|test)
DATA       ?= data/mock
# mock survey rows for `make data`
ROWS       ?= 20000
SEED       ?= 0
WORKERS    ?= 2
SHARDS     ?= data/shards
RUN        ?= runs/gen4
EPOCHS     ?= 50
BATCH      ?= 1024
SPLIT      ?= test
SCORES     ?= $(RUN)/scores_$(SPLIT).parquet
REPORT     ?= $(RUN)/report
# hard-negative lookup parquet for `make shards` (empty: none)
LOOKUP     ?=
HN_WEIGHT  ?= 5
MINE_SCORES ?= $(RUN)/scores_train.parquet
MINE_OUT   ?= $(RUN)/hard_neg_lookup.parquet
GEN4_OUT   ?= runs/gen4_experiment
GEN4_ROWS  ?= 60000
# extra gen4 flags, e.g. GEN4_ARGS=--tiny for a few minutes on a CPU
GEN4_ARGS  ?=
DEMO_DIR   ?= runs/demo
# `make search-demo`: an unlabelled mock survey searched with the demo's checkpoint
SEARCH_DIR ?= runs/search_demo
SEARCH_ROWS ?= 4000
SEARCH_TOP ?= 100
SEARCH_CKPT ?= $(DEMO_DIR)/run/best.pt
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install runtime-check demo search-demo test test-gpu test-dist lint data validate shards train infer eval mine gen4 bench bench-gpu bench-multigpu clean

help:
	@echo "haloscope make targets (variables in CAPS can be overridden: make train EPOCHS=5)"
	@echo "  demo     fresh clone -> install -> mock survey -> shards -> train -> infer -> eval report"
	@echo "  search-demo   demo checkpoint (trained if absent) -> unlabelled mock survey -> search -> recall of planted lenses in the top N"
	@echo "  test     the fast test suite (CPU, a few minutes)"
	@echo "  runtime-check   the runtime lock alone in $(RUNTIME_VENV): imports + haloscope env"
	@echo "  data     write a mock DR10 survey to DATA=$(DATA) (ROWS=$(ROWS))"
	@echo "  shards   convert DATA parquet to WebDataset shards in SHARDS (LOOKUP=... adds hard negatives)"
	@echo "  train    train ConvNeXt-Tiny on SHARDS into RUN (torchrun: see README)"
	@echo "  infer    score SPLIT with RUN/best.pt into SCORES"
	@echo "  eval     stratified metrics + report from SCORES into REPORT"
	@echo "  mine     hard-negative lookup from MINE_SCORES into MINE_OUT"
	@echo "  gen4     the Gen3 -> mine -> Gen4 experiment into GEN4_OUT"
	@echo "  bench    loader / converter / simulator benchmarks into bench/results/"
	@echo "  bench-gpu, bench-multigpu   GPU benchmarks (one GPU; DDP scaling on >= 2 GPUs)"
	@echo "  clean    remove generated data and runs (keeps .venv)"

# --no-deps: exactly the locked versions, nothing resolved at install time; `pip check`
# then fails the install if a lock misses a dependency.
$(STAMP): pyproject.toml requirements.lock requirements-test.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock -r requirements-test.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# The runtime lock alone in a second venv: every module imports and `haloscope env` runs
# without the test tools (run by .ci/run).
runtime-check:
	test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install -q --no-deps -r requirements.lock
	$(RUNTIME_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(RUNTIME_VENV)/bin/python -m pip check
	$(RUNTIME_VENV)/bin/python tools/import_all.py
	$(RUNTIME_VENV)/bin/haloscope env

install: $(STAMP)

demo: $(STAMP)
	$(HALO) simulate --out $(DEMO_DIR)/data --rows 8000 --selection-frac 0 --seed $(SEED) --workers $(WORKERS) --overwrite
	$(HALO) shards --data $(DEMO_DIR)/data --out $(DEMO_DIR)/shards --workers $(WORKERS) --train-min-arc-snr 3
	$(HALO) train --shards $(DEMO_DIR)/shards --out-dir $(DEMO_DIR)/run --epochs 6 --batch-size 64 --preset demo --overwrite
	$(HALO) infer --ckpt $(DEMO_DIR)/run/best.pt --shards $(DEMO_DIR)/shards --split test --out $(DEMO_DIR)/run/scores_test.parquet
	$(HALO) eval --scores $(DEMO_DIR)/run/scores_test.parquet --out-csv $(DEMO_DIR)/run/stratified_fpr.csv --report-dir $(DEMO_DIR)/run/report --stamps $(DEMO_DIR)/shards/test/stamps.zarr
	@echo "demo done: report at $(DEMO_DIR)/run/report/report.md (and report.html)"

# Without SEARCH_CKPT the demo's first three steps make it (the same commands as `make demo`).
# The survey's seed differs from the training data's, so no searched galaxy was trained on.
search-demo: $(STAMP)
	@if [ ! -f $(SEARCH_CKPT) ]; then set -ex; \
	  $(HALO) simulate --out $(DEMO_DIR)/data --rows 8000 --selection-frac 0 --seed $(SEED) --workers $(WORKERS) --overwrite; \
	  $(HALO) shards --data $(DEMO_DIR)/data --out $(DEMO_DIR)/shards --workers $(WORKERS) --train-min-arc-snr 3; \
	  $(HALO) train --shards $(DEMO_DIR)/shards --out-dir $(DEMO_DIR)/run --epochs 6 --batch-size 64 --preset demo --overwrite; \
	fi
	$(HALO) simulate --survey --out $(SEARCH_DIR)/survey --rows $(SEARCH_ROWS) --seed $$(( $(SEED) + 1000 )) --workers $(WORKERS) --overwrite
	rm -rf $(SEARCH_DIR)/search
	$(HALO) search --input $(SEARCH_DIR)/survey/cutouts --ckpt $(SEARCH_CKPT) --out $(SEARCH_DIR)/search --top-n $(SEARCH_TOP) --num-workers $(WORKERS)
	$(BIN)/python -m haloscope.evaluate.search_recall --candidates $(SEARCH_DIR)/search/candidates.parquet \
	  --truth $(SEARCH_DIR)/survey/truth.parquet --top-n 50,$(SEARCH_TOP),200 --json $(SEARCH_DIR)/recall.json
	@echo "search-demo done: grade the top $(SEARCH_TOP) in $(SEARCH_DIR)/search/candidates.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

test-dist: $(STAMP)
	$(BIN)/python -m pytest -q -m dist $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check haloscope preprocess shards train infer evaluate bench tests tools
	$(BIN)/ruff format --check haloscope preprocess shards train infer evaluate bench tests tools

data: $(STAMP)
	$(HALO) simulate --out $(DATA) --rows $(ROWS) --seed $(SEED) --workers $(WORKERS)

validate: $(STAMP)
	$(HALO) validate --data $(DATA)

shards: $(STAMP)
	$(HALO) shards --data $(DATA) --out $(SHARDS) --workers $(WORKERS) \
	  $(if $(LOOKUP),--hard-neg-path $(LOOKUP) --hard-neg-weight $(HN_WEIGHT),)

train: $(STAMP)
	$(HALO) train --shards $(SHARDS) --out-dir $(RUN) --epochs $(EPOCHS) --batch-size $(BATCH) $(TRAIN_ARGS)

infer: $(STAMP)
	$(HALO) infer --ckpt $(RUN)/best.pt --shards $(SHARDS) --split $(SPLIT) --out $(SCORES)

eval: $(STAMP)
	$(HALO) eval --scores $(SCORES) --out-csv $(REPORT)/stratified_fpr.csv --report-dir $(REPORT) \
	  $(if $(wildcard $(SHARDS)/$(SPLIT)/stamps.zarr),--stamps $(SHARDS)/$(SPLIT)/stamps.zarr,)

mine: $(STAMP)
	$(HALO) mine --scores $(MINE_SCORES) --out $(MINE_OUT)

gen4: $(STAMP)
	$(HALO) gen4 --out $(GEN4_OUT) --rows $(GEN4_ROWS) --workers $(WORKERS) \
	  --sim-args "--selection-frac 0" $(GEN4_ARGS)

bench-gpu: $(STAMP)
	$(HALO) bench gpu --out bench/results/gpu.json

bench-multigpu: $(STAMP)
	$(HALO) bench multigpu --out bench/results/multigpu.json $(MULTIGPU_ARGS)

bench: $(STAMP)
	$(HALO) bench loader --out bench/results/loader.json
	$(HALO) bench convert --out bench/results/convert.json
	$(HALO) bench simulate --out bench/results/simulate.json
	$(HALO) bench gil --out bench/results/gil.json

clean:
	rm -rf data/mock data/shards runs
