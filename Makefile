# lkedge entry points. `make test` and `make demo` work on a fresh machine: they create
# .venv and install the pinned dependencies first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=
# pytest-xdist workers: two per core (at most 16). The suite mostly waits, on MicroPython,
# relay, Node and mpremote subprocesses and on protocol timers: with one worker per core a
# 2-core machine was ~1.1 cores busy (a clean-clone run: 527 s of tests), with two ~1.8
# (310-317 s). `make test PYTEST_WORKERS=0` runs in one process, `=auto` one per core.
PYTEST_WORKERS ?= $(shell python3 -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(); print(min(16, 2 * (n or 1)))")
PYTEST_PAR := -n $(PYTEST_WORKERS) --dist worksteal

.PHONY: setup demo test test-micropython bench clean interop-node browser lint

setup: $(VENV)/.installed interop-node

$(VENV)/.installed: requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The browser client (clients/browser: livekit-client's own RPC and data-stream managers
# on the relay's WebSocket port) and the interop peer built from its packages, both from
# the one committed lockfile.
CLIENT_DIR := clients/browser
NODE_DIR := tests/interop/node
interop-node: $(CLIENT_DIR)/dist/lkedge.mjs $(NODE_DIR)/build/peer.cjs
browser: $(CLIENT_DIR)/dist/lkedge.mjs

$(CLIENT_DIR)/node_modules/.package-lock.json: $(CLIENT_DIR)/package-lock.json
	npm ci --prefix $(CLIENT_DIR) --no-audit --no-fund

$(CLIENT_DIR)/dist/lkedge.mjs: $(CLIENT_DIR)/node_modules/.package-lock.json $(CLIENT_DIR)/build.mjs $(CLIENT_DIR)/lkedge.d.mts $(wildcard $(CLIENT_DIR)/src/*.ts)
	cd $(CLIENT_DIR) && node build.mjs

$(NODE_DIR)/build/peer.cjs: $(CLIENT_DIR)/node_modules/.package-lock.json $(NODE_DIR)/build.mjs $(wildcard $(NODE_DIR)/src/*.ts) $(wildcard $(CLIENT_DIR)/src/*.ts)
	node $(NODE_DIR)/build.mjs

# The main job: relay + emulated ESP32 + deploy with mpremote + calls from the host.
# (Python alone: the Node interop peer is the suite's.)
demo: $(VENV)/.installed
	$(PY) -m lkedge_host.demo

# The whole suite: CPython tests, and every tests/device module again under the real
# MicroPython interpreter with a board-like heap (tests/test_micropython_half.py).
test: setup
	$(PY) -m pytest -q $(PYTEST_PAR) $(PYTEST_ARGS)

# pyflakes' checks over every Python file (.flake8), and the browser client's type check
# (clients/browser/typecheck.mjs); both are tests in `make test` too.
lint: $(VENV)/.installed $(CLIENT_DIR)/node_modules/.package-lock.json
	$(PY) -m flake8 lib host_tools firmware examples tests boards
	cd $(CLIENT_DIR) && node typecheck.mjs

test-micropython: setup
	$(PY) -m pytest -q $(PYTEST_PAR) tests/test_micropython_half.py $(PYTEST_ARGS)

bench: setup
	$(PY) -m lkedge_host.bench.throughput
	$(PY) -m lkedge_host.bench.board_calls
	$(PY) -m lkedge_host.bench.board_heap
	$(PY) -m lkedge_host.bench.load --participants 1000 --seconds 60 --workers 2

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
