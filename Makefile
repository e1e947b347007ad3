# Two commands set up everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch is enough for the quickstart and the tests; GPU users install their own torch first.
TORCH_SPEC ?= torch==2.13.0
# The lowest TRL pyproject allows; `make test-floor` keeps that promise true.
TRL_FLOOR ?= 1.0.0
# a comma, to pass one inside a $(call) argument
, := ,

.PHONY: quickstart test test-fast test-gpu test-ppo test-floor lint install clean

# $(call venv,DIR,EXTRAS[,PINS]): a virtual environment with torch and dpo-cli[EXTRAS] installed in it
define venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -c "import torch" 2>/dev/null || $(1)/bin/python -m pip install -q "$(TORCH_SPEC)" \
		|| $(1)/bin/python -m pip install -q torch
	$(1)/bin/python -m pip install -q -e ".[$(2)]" $(3)
endef

$(BIN)/dpo-cli: pyproject.toml
	$(call venv,$(VENV),dev)
	touch $(BIN)/dpo-cli

install: $(BIN)/dpo-cli

quickstart: install
	HF_HUB_OFFLINE=1 $(BIN)/dpo-cli train recipes/quickstart.yaml --overwrite

# Everything, slow training tests included (what CI runs).
test: install
	$(BIN)/python -m pytest -q

# Under a minute on 2 cores: every test that does not train a model, on two workers.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" -n 2

# The tests that need CUDA (skipped by the others on a machine without it).
test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

# Two more TRL lines, each in an environment of its own: the newest that still has PPO (trl<1.13, the ppo extra),
# and the lowest the package allows. Both run the PPO tests, every stage's smoke run, DPO with resume, precomputed
# reference and held-out figures, the TRL touch points, and vision-language models (training on images, their
# held-out figures, eval and compare).
TRL_LINE_TESTS := tests/test_stages_smoke.py tests/test_stages_config.py tests/test_recipes_dir.py tests/test_train.py \
	tests/test_refcache.py tests/test_reliability.py tests/test_heldout.py tests/test_trl_compat.py tests/test_vlm.py \
	tests/test_vlm_evidence.py tests/test_run_plan.py tests/test_trl_fields.py
test-ppo:
	$(call venv,.venv-ppo,dev$(,)ppo)
	.venv-ppo/bin/python -m pytest -q $(TRL_LINE_TESTS)

test-floor:
	$(call venv,.venv-floor,dev$(,)ppo,"trl==$(TRL_FLOOR)")
	.venv-floor/bin/python -m pytest -q $(TRL_LINE_TESTS)

clean:
	rm -rf $(VENV) .venv-ppo .venv-floor runs
