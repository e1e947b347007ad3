# Two commands set up everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch is enough for the quickstart and the tests; GPU users install their own torch first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: quickstart test test-fast install clean

$(BIN)/dpo-cli: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)" || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/dpo-cli

install: $(BIN)/dpo-cli

quickstart: install
	HF_HUB_OFFLINE=1 $(BIN)/dpo-cli train recipes/quickstart.yaml --overwrite

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
