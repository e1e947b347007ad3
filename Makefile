# Two commands set up everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch is enough for the quickstart and the tests; GPU users install their own torch first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: quickstart test test-fast test-ppo install clean

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

# A second environment on the TRL line that still has PPO (trl<1.13): the PPO tests, every stage's smoke run and a
# DPO smoke run, so both TRL lines stay green.
PPO_VENV ?= .venv-ppo
test-ppo:
	test -x $(PPO_VENV)/bin/python || $(PYTHON) -m venv $(PPO_VENV)
	$(PPO_VENV)/bin/python -m pip install -q --upgrade pip
	$(PPO_VENV)/bin/python -c "import torch" 2>/dev/null || $(PPO_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" || $(PPO_VENV)/bin/python -m pip install -q torch
	$(PPO_VENV)/bin/python -m pip install -q -e ".[dev,ppo]"
	$(PPO_VENV)/bin/python -m pytest -q tests/test_stages_smoke.py tests/test_stages_config.py tests/test_recipes_dir.py \
		tests/test_train.py::test_dpo_smoke_run_logs_loss_changes_weights_and_saves_a_loadable_model

clean:
	rm -rf $(VENV) $(PPO_VENV) runs
