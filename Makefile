# `make demo` and `make test` do all set-up on a fresh machine (a venv in .venv).
# TORCH: the torch requirement installed first. CPU default pinned for CI; GPU users pass their own, e.g.
#   make install TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install browser lint demo demo-pretrain test test-all bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	# keep that torch: a newer torchvision (via timm) would otherwise "upgrade" it to a CUDA build
	$(BIN)/pip freeze | grep -i '^torch[=@ ]' > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q -c $(VENV)/torch-constraint.txt -e '.[dev,tracking]'
	touch $@

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash pipelines/demo.sh

# Self-supervised pretraining on the demo's images vs the scratch ViT (reuses demo-out/ when there)
demo-pretrain: install
	PATH="$(abspath $(BIN)):$$PATH" bash pipelines/demo_pretrain.sh

# Headless Chromium for the `medvit compare` page test (tests/test_compare.py). Installed with apt-get
# when missing and running as root (CI); otherwise a note, and the test skips (it fails when CI=true).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found; install it (Debian: apt-get install chromium) to run the report's browser test"; fi

# ruff (pyflakes + pycodestyle; settings in pyproject.toml): `make test` lints before it runs pytest
lint: install
	$(BIN)/ruff check .

test: install browser lint
	$(BIN)/python -m pytest -q

test-all: install browser lint
	$(BIN)/python -m pytest -q -m ''

# The three benchmarks, reduced to a few minutes on a laptop CPU (ratios, not absolute speeds).
bench: install
	$(BIN)/python pipelines/bench_ingest.py --per-syntax 8
	$(BIN)/python pipelines/bench_train.py --steps 5 --warmup 1 --image-size 128
	$(BIN)/python pipelines/bench_predict.py --patients 6 --repeats 2 --image-size 128

clean:
	rm -rf demo-out .pytest_cache
