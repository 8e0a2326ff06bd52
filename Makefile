# ProtoAtlas: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_DIR ?= demo-data

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# (Re)install when pyproject.toml changes; editable, with the test tools.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/protoatlas synth --out $(DEMO_DIR)
	$(BIN)/protoatlas detect --normals $(DEMO_DIR)/train/good --images $(DEMO_DIR)/test \
		--labels $(DEMO_DIR)/labels.csv --out $(DEMO_DIR)/scores.csv --maps $(DEMO_DIR)/maps

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_detect.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
