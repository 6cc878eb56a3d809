# `make demo` and `make test` do all set-up on a fresh machine (a venv in .venv).
# TORCH: the torch requirement installed first. CPU default pinned for CI; GPU users pass their own, e.g.
#   make install TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test test-all bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash pipelines/demo.sh

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

# The three benchmarks, reduced to a few minutes on a laptop CPU (ratios, not absolute speeds).
bench: install
	$(BIN)/python pipelines/bench_ingest.py --per-syntax 8
	$(BIN)/python pipelines/bench_train.py --steps 5 --warmup 1 --image-size 128
	$(BIN)/python pipelines/bench_predict.py --patients 6 --repeats 2 --image-size 128

clean:
	rm -rf demo-out .pytest_cache
