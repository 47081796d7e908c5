# The README's two commands: `make demo` and `make test`. Each sets everything up first.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test lint bench docs stack-up stack-down clean

# Python 3.11 and Java 17 are the only prerequisites; uv, the environment and the pinned jars
# are installed here.
setup:
	@command -v uv >/dev/null 2>&1 || test -x $(HOME)/.local/bin/uv || python3 -m pip install --user --quiet uv \
	  || python3 -m pip install --user --quiet --break-system-packages uv
	$(UV) sync --frozen
	$(UV) run ohlcv setup

demo: setup
	$(UV) run ohlcv demo

# The data docs test opens the site in a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the data docs test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

test: setup browser
	$(UV) run pytest

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy flows spark_jobs expectations infra settings tests bench

docs: setup
	$(UV) run ohlcv docs

bench: setup
	$(UV) run python bench/bench_candles.py

stack-up: setup
	$(UV) run ohlcv stack up

stack-down:
	$(UV) run ohlcv stack down

clean: stack-down
	rm -rf .ohlcv
