# Two-command quick start: `make demo` and `make test`. Both create ./.venv on first use
# and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all test-fast bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jaxsr needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

# The main job: fit a formula to a bundled example with the default model.
# --max-time bounds the whole fit (sampling, search, choice): see README, "The search".
demo: $(STAMP)
	$(BIN)/jaxsr fit strogatz:lv1 --target label --max-time 20

# CI's command: every test but the few marked slow (each 15-45 s; they repeat what faster
# tests check at larger sizes or longer times), so that the suite stays under 10 minutes on
# a 2-core machine. `make test-all` runs them too. Two pytest-xdist workers, each taking
# whole files (a file's module fixtures, such as test_train's background runs, start once):
# 6 minutes on the 2-core machine instead of 8 in one process.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile

test: $(STAMP)
	$(PYTEST) -m "not slow or smoke"

test-all: $(STAMP)
	$(PYTEST)

# The inner loop: no slow tests, no end-to-end smoke runs.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not smoke"

bench: $(STAMP)
	$(BIN)/python benchmarks/evaluate.py --json

clean:
	rm -rf $(VENV) build *.egg-info
