# Two-command quick start: `make demo` and `make test`. Both create ./.venv on first use
# and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (30 s or more each).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/evaluate.py --json

clean:
	rm -rf $(VENV) build *.egg-info
