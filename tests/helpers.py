"""Test helpers: run the CLI in-process and capture its exit code and output."""

from __future__ import annotations

import sys

import pytest


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Call dpo_cli.cli.main() with ``args``; return (exit code, stdout, stderr)."""
    from dpo_cli.cli import main

    argv = sys.argv
    sys.argv = ["dpo-cli", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def build_trainer(recipe, *, ref_cache=None, eval_data: bool = False, build=None):
    """The TRL trainer a run would build for ``recipe`` (steps 1 to 4 of train/run.py), without training; ``build``
    replaces the stage's own trainer call."""
    from dpo_cli.data.load import load_splits
    from dpo_cli.train.config import build_config
    from dpo_cli.train.device import plan_device
    from dpo_cli.train.models import load_models, load_tokenizer
    from dpo_cli.train.stages import get_stage
    from dpo_cli.train.stages.base import StageInputs

    stage = get_stage(recipe.stage)
    plan = plan_device(recipe.trainer)
    models = load_models(recipe, stage, plan)
    train, evaluation, _ = load_splits(recipe.data, recipe.seed, stage.data_kind)
    inputs = StageInputs(recipe, build_config(recipe, plan), models.policy, models.reference,
                         load_tokenizer(recipe.model), train, evaluation if eval_data else None, [],
                         models.peft_config, ref_cache)
    return (build or stage.build_trainer)(inputs)
