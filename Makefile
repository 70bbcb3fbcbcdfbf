# `make demo` and `make test` each create .venv and install the project first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# test processes side by side (pytest-xdist); each runs one torch thread (tests/conftest.py),
# so 2 fill the 2 cores of CI without oversubscribing them. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $$(command -v $(PY) || command -v python3) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m selection demo --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) mlflow.db mlruns optuna.journal demo_out
