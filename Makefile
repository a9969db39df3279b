# `make demo` and `make test` are each the whole set-up on a fresh machine.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip --disable-pip-version-check -q
FMNIST    := /usr/share/datasets/fashion-mnist
STAMP     := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup data jpeg-headers demo lint test test-fast bench fuzz clean

setup: $(STAMP) data

# torch is installed first and pinned: a bare `torch` requirement pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml shards/_jpegcrop.c | jpeg-headers
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,s3,tune,imagenet,track]"
	@touch $@

data:
	@test -d $(FMNIST) || $(call apt_install,dataset-fashion-mnist,Fashion-MNIST,$(FMNIST))

# The windowed JPEG decoder (shards/_jpegcrop.c) builds against libjpeg-turbo's headers.
jpeg-headers:
	@test -f /usr/include/jpeglib.h || $(call apt_install,libjpeg62-turbo-dev,libjpeg-turbo's headers,/usr/include)

# $(call apt_install,package,what,where): Debian's package, as root or with passwordless sudo.
apt_install = { echo "$(2) missing: installing Debian's $(1)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  ( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(1) ) >/dev/null \
	  || { echo "error: could not install $(1) (needs root or passwordless sudo and Debian's package index)." >&2; \
	       echo "       Install it by hand: apt-get install $(1) (files land in $(3))." >&2; exit 1; }; }

# shard -> train (2 Ray Train workers, data parallel) -> eval on the Fashion-MNIST test split.
demo: setup
	@start=$$(date +%s); \
	$(VENV)/bin/cnnctl shard fashion-mnist data/fashion-mnist --shard-size 5000 --workers 2 && \
	$(VENV)/bin/cnnctl train --preset demo-fashion && \
	$(VENV)/bin/cnnctl eval runs/demo-fashion --split test && \
	$(VENV)/bin/cnnctl report runs/demo-fashion && \
	echo "demo wall time: $$(( $$(date +%s) - start )) s"

# ruff first (its rules: pyproject.toml), over the whole tree.
lint: setup
	$(PY) -m ruff check .

# pytest exits 5 when it collected no tests; that is a failure here, never a silent pass.
# `make test` is both tiers (CI runs it); `make test-fast` leaves out the slow tier (tests marked
# `slow`: tests/e2e, the tests on the session's Ray cluster, process groups; docs/DESIGN.md, Tests).
test: lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) bench/lrn.py
	$(PY) bench/shard.py
	$(PY) bench/loader.py
	$(PY) bench/eval.py
	$(VENV)/bin/cnnctl shard fashion-mnist data/fashion-mnist --shard-size 5000 --workers 2
	$(PY) bench/train_step.py

# The fuzz properties of tests/fuzzing.py run long: per family, inputs tried and what each got.
FUZZ_SECONDS ?= 60
fuzz: setup
	$(PY) bench/fuzz.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf runs data/fashion-mnist .pytest_cache
