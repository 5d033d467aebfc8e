# Two commands do all the set-up: `make pipeline` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Stage commands in dvc.yaml call `python`; this makes it the project's interpreter.
export PATH := $(BIN):$(PATH)

.PHONY: venv pipeline pipeline-gpu pipeline-ddp test test-fast test-heavy bench ui retrain clean

# The venv is about 6.5 GB (torch 2.14.1 on x86_64 is the CUDA build and brings its nvidia-* wheels);
# stop with a clear message instead of pip's ENOSPC halfway through. VENV_MIN_FREE_GB=0 skips the check.
VENV_MIN_FREE_GB ?= 7

$(VENV)/.installed: pyproject.toml
	@free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	if [ ! -x $(BIN)/python ] && [ "$$free_kb" -lt $$(( $(VENV_MIN_FREE_GB) * 1024 * 1024 )) ]; then \
	  echo "make: only $$(( free_kb / 1024 / 1024 )) GB free on $$(df -P . | awk 'NR==2 {print $$6}'); the venv needs about $(VENV_MIN_FREE_GB) GB (torch + nvidia wheels). Free some space, or set VENV_MIN_FREE_GB=0 to try anyway." >&2; \
	  exit 1; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

pipeline: venv
	$(BIN)/dvc repro

# The GPU profile: params overrides from profiles/gpu.yaml, run as a DVC experiment.
pipeline-gpu: venv
	$(BIN)/python profiles/run.py profiles/gpu.yaml

# Data-parallel training: every train stage under torchrun with NPROC processes (one per GPU), as a DVC experiment.
NPROC ?= 2
pipeline-ddp: venv
	$(BIN)/dvc exp run -S runtime.distributed.nproc_per_node=$(NPROC)

# Tests run in parallel, one pytest worker per core (at most 4); a file whose module fixture is a pipeline run or
# trained models is one xdist_group, run whole by one worker so the fixture is built once. Every worker and the
# stages it starts use one torch thread (tests/conftest.py, tests/repo_support.py).
PYTEST_PARALLEL ?= -n auto --maxprocesses 4 --dist loadgroup

test: venv
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: venv
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

# Also the tests too heavy for a CPU run (the ssd300_vgg16 contract: VGG16 at 300 px); for a GPU machine or a nightly job.
test-heavy: venv
	CVPIPE_HEAVY_TESTS=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL)

bench: venv
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_import.py

# The MLflow UI on localhost over the project's store (`make ui MLFLOW_PORT=5001` for another port).
MLFLOW_PORT ?= 5000
ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# For schedulers: re-run the pipeline when data/params changed, promote, print one line (see deploy/).
retrain: venv
	$(BIN)/cvpipe retrain --repo $(CURDIR)

# Only what dvc.yaml declares as outputs, and dvc.lock: never user data, never the MLflow store.
clean: venv
	$(BIN)/cvpipe clean --repo $(CURDIR)
