# The README's two commands: `make demo` and `make test`. Each sets everything up first.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup test-deps demo test test-fast test-core lint bench docs notebook stack-up stack-down clean

# Python 3.11 and Java 17 are the only prerequisites; uv, the environment and the pinned jars
# are installed here. Bytecode is compiled once at install: with PYTHONDONTWRITEBYTECODE set (CI
# images, some shells) every `ohlcv` call otherwise recompiles pyiceberg, pyarrow, Prefect and GX
# from source (measured: `ohlcv candles` for a day of 1m candles 9.6 s -> 4.8 s).
setup:
	@command -v uv >/dev/null 2>&1 || test -x $(HOME)/.local/bin/uv || python3 -m pip install --user --quiet uv \
	  || python3 -m pip install --user --quiet --break-system-packages uv
	$(UV) sync --frozen --compile-bytecode
	$(UV) run python -m compileall -q cli core flows ingest read settings spark_jobs expectations infra
	$(UV) run ohlcv setup

demo: setup
	$(UV) run ohlcv demo

# Test-only system packages from Debian: Chromium opens the data docs in a real headless
# browser; PostgreSQL hosts the JDBC catalog for the PostgreSQL catalog tests.
test-deps:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="chromium"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

# Two pytest-xdist workers (the build machine's cores): much of the suite waits on servers
# starting and on subprocesses, so two overlap well. Tests are grouped by module, by catalog
# shape and (test_faults) one by one, the longest groups first (tests/support/groups.py); each
# worker's ports are 50 apart.
XDIST := -n 2 --dist loadgroup --no-loadscope-reorder

test: setup test-deps
	$(UV) run ohlcv setup --all  # the REST catalog + S3 tests' jars too
	$(UV) run pytest $(XDIST)

# Test tiers, by the markers tests/conftest.py derives from the fixtures a test uses.
# test-fast: no JVM at all (no Spark Connect server, no spark-submit).
test-fast: setup
	$(UV) run pytest $(XDIST) -m "not (spark or jvm or stack)"

# test-core: test-fast and the tests of the session's one Spark Connect server; no other
# stack (cluster, PostgreSQL, REST + S3, servers to kill, Prefect servers, classic JVM).
test-core: setup test-deps
	$(UV) run pytest $(XDIST) -m "not (jvm or stack)"

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy cli core flows ingest read spark_jobs expectations infra settings tests bench

docs: setup
	$(UV) run ohlcv docs

# docs/configuration.md is generated from the Settings field descriptions; tests/test_docs.py
# fails when it is stale.
.PHONY: docs-config
docs-config: setup
	$(UV) run python -m settings.reference docs/configuration.md

# The example notebook in JupyterLab, installed for this command only (the stack must be up).
notebook: setup
	$(UV) run --with jupyterlab==4.6.6 jupyter lab notebooks/explore_candles.ipynb

bench: setup
	$(UV) run python bench/bench_candles.py

stack-up: setup
	$(UV) run ohlcv stack up

stack-down:
	$(UV) run ohlcv stack down

clean: stack-down
	rm -rf .ohlcv
