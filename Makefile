# The README's two commands: `make run` and `make test`. Each does its own setup first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup prereqs run test test-fast bench clean

setup: prereqs $(STAMP)

prereqs:
	@sh infra/check_prereqs.sh $(PYTHON)

# Reinstalls only when the pins or the package metadata change.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

## Main job on the embedded defaults.
run: setup
	@$(BIN)/python -m cli.demo

## Whole test suite, slow end-to-end tests included (what CI runs).
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Quick local loop: skips tests marked slow.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
