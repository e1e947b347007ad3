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


def build_trainer(recipe, *, eval_data: bool = False, build=None):
    """The TRL trainer a run would build for ``recipe``, without training (build_run's first part)."""
    return build_run(recipe, eval_data=eval_data, build=build)[0]


def build_run(recipe, *, eval_data: bool = False, build=None):
    """(trainer, reference log-prob cache or None) as runner/run.py builds them for ``recipe``: its data, the defaults
    settled for this run, its config, tokenizer and models, then run.build_trainer. ``eval_data`` hands the trainer
    the held-out split (its reference is then precomputed too); ``build`` replaces the stage's own trainer call."""
    import dataclasses

    from dpo_cli.runner.run import build_trainer as build_run_trainer
    from dpo_cli.train.config import settle_defaults
    from dpo_cli.train.device import plan_device
    from dpo_cli.train.models import load_models, load_processing_class
    from dpo_cli.train.plan import configure
    from dpo_cli.train.stages import get_stage
    from dpo_cli.train.stages.base import PlannedRun, StageInputs

    stage = get_stage(recipe.stage)
    if build is not None:
        stage = dataclasses.replace(stage, build_trainer=build)
    plan = plan_device(recipe.trainer)
    train, evaluation, data_info = stage.load_data(recipe)
    settled, defaults = settle_defaults(recipe, PlannedRun(plan, 1, lambda: data_info["train"]))
    recipe, args = settled, configure(recipe, settled, defaults, plan, 1).config
    models = load_models(recipe, stage, plan)
    inputs = StageInputs(recipe, args, models.policy, models.reference, load_processing_class(recipe.model), train,
                         evaluation if eval_data else None, [], models.peft_config)
    return build_run_trainer(stage, inputs, data_info, plan.precision)
