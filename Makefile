# `make demo` and `make test` are each the whole set-up on a fresh machine.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip --disable-pip-version-check -q
FMNIST    := /usr/share/datasets/fashion-mnist
STAMP     := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup data demo test bench clean

setup: $(STAMP) data

# torch is installed first and pinned: a bare `torch` requirement pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,s3]"
	@touch $@

data:
	@if [ ! -d $(FMNIST) ]; then \
	  echo "Fashion-MNIST is missing: installing Debian's dataset-fashion-mnist"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  ( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist ) >/dev/null \
	  || { echo "error: could not install dataset-fashion-mnist (needs root or passwordless sudo and Debian's package index)." >&2; \
	       echo "       Install it by hand: apt-get install dataset-fashion-mnist (files land in $(FMNIST))." >&2; exit 1; }; \
	fi

# shard -> train (2 Ray Train workers, data parallel) -> eval on the Fashion-MNIST test split.
demo: setup
	@start=$$(date +%s); \
	$(VENV)/bin/cnnctl shard fashion-mnist data/fashion-mnist --shard-size 5000 --workers 2 && \
	$(VENV)/bin/cnnctl train --preset demo-fashion && \
	$(VENV)/bin/cnnctl eval runs/demo-fashion --split test && \
	$(VENV)/bin/cnnctl report runs/demo-fashion && \
	echo "demo wall time: $$(( $$(date +%s) - start )) s"

# pytest exits 5 when it collected no tests; that is a failure here, never a silent pass.
test: setup
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(PY) bench/lrn.py
	$(PY) bench/shard.py
	$(PY) bench/loader.py
	$(VENV)/bin/cnnctl shard fashion-mnist data/fashion-mnist --shard-size 5000 --workers 2
	$(PY) bench/train_step.py

clean:
	rm -rf runs data/fashion-mnist .pytest_cache
