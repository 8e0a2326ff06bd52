# ProtoAtlas: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_DIR ?= demo-data

.PHONY: demo test test-fast install clean bench lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# (Re)install when pyproject.toml changes; editable, with the test tools.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The review web app on the synthetic demo batch (discovered on first start; prints the URL).
demo: install
	$(BIN)/protoatlas serve --demo

test: install
	$(BIN)/python -m pytest -q

# The suite without the tests marked slow (those that fit a real backbone end to end).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Ruff (pycodestyle, pyflakes, import order; formatting), mypy on engine/, storage/ and
# protoatlas/, and the layering contracts of pyproject.toml (import-linter: webapp over the
# service over engine and storage; engine imports neither gradio nor duckdb; storage no
# torch; webapp no storage).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every benchmark with its default arguments (tens of minutes on 2 cores; results are
# appended under bench-out/, the tables go into BENCHMARKS.md by hand).
bench: install
	$(BIN)/python benchmarks/bench_suite.py
	$(BIN)/python benchmarks/bench_speed.py tiles
	$(BIN)/python benchmarks/bench_speed.py bottle
	$(BIN)/python benchmarks/bench_detect.py
	$(BIN)/python benchmarks/bench_resize_mode.py
	$(BIN)/python benchmarks/bench_discover.py eval --clusters 3
	$(BIN)/python benchmarks/bench_discover.py xsdd
	$(BIN)/python benchmarks/bench_storage.py
	$(BIN)/python benchmarks/bench_webapp.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
