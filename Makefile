# The whole development loop. The README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: demo test test-rust test-python dev wheel lint bench bench-quick soak crash-matrix \
	redis-server clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Python packages the build, tests and lint need (re-run when pyproject.toml changes).
$(VENV)/.deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q 'maturin>=1.5,<2' pytest pytest-timeout 'hypothesis>=6' \
	    'redis>=4' gevent django ruff mypy
	touch $@

# Editable build: the Rust extension compiled in release mode, Python sources linked in place.
dev: $(VENV)/.deps
	$(VENV)/bin/maturin develop --release -q

demo: dev
	$(PY) -m huey.demo

# The Debian redis-server is needed by the Redis tests; install it when missing and root.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      redis-server >/dev/null) || exit 1; \
	  else echo "redis-server is missing: sudo apt-get install redis-server" >&2; exit 1; fi; }

test: redis-server dev test-rust test-python

test-rust:
	cargo test -q

test-python: dev
	$(PY) -m pytest -q

wheel: $(VENV)/.deps
	$(VENV)/bin/maturin build --release -q --out dist

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check python tests benches
	cargo fmt --check
	cargo clippy --tests -q -- -D warnings
	$(PY) -m mypy.stubtest huey._native

bench: redis-server dev
	$(PY) benches/run.py

bench-quick: redis-server dev
	$(PY) benches/run.py --quick

# 200,000 tasks through 4 consumer processes on Redis and on Sqlite (not part of `make test`).
soak: redis-server dev
	$(PY) benches/soak.py --storage redis --tasks 200000
	$(PY) benches/soak.py --storage sqlite --tasks 200000

# The crash matrix of `make test`, with ten times the tasks per cell.
crash-matrix: redis-server dev
	HUEY_CRASH_MATRIX_TASKS=200 $(PY) -m pytest -q -s tests/test_crash_matrix.py

clean:
	rm -rf target dist $(VENV) .pytest_cache .hypothesis
