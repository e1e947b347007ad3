"""Recipe keys of the evidence features: plot, watchdog, early_stopping, and their cross-field rules."""

from __future__ import annotations

import pytest

from dpo_cli.core.errors import RecipeError
from dpo_cli.train.recipe_load import load_recipe

BASE = """\
stage: dpo
model:
  name_or_path: builtin:tiny-chat
data:
  train: builtin:demo/train.jsonl
{eval}trainer:
  beta: 0.1
{trainer}{extra}"""


def _write(write_recipe, *, eval="  eval: builtin:demo/eval.jsonl\n", trainer="  eval_strategy: steps\n", extra=""):
    return write_recipe(BASE.format(eval=eval, trainer=trainer, extra=extra))


def test_defaults_plot_and_watchdog_on_no_early_stopping(write_recipe):
    recipe = load_recipe(_write(write_recipe))
    assert recipe.plot is True and recipe.watchdog is True and recipe.early_stopping is None


def test_early_stopping_section_and_switches_load(write_recipe):
    extra = "plot: false\nwatchdog: false\nearly_stopping:\n  metric: rewards/accuracies\n  patience: 2\n"
    recipe = load_recipe(_write(write_recipe, extra=extra))
    assert recipe.plot is False and recipe.watchdog is False
    assert recipe.early_stopping.model_dump() == {"metric": "rewards/accuracies", "patience": 2, "min_delta": 0.0,
                                                  "mode": None}


def test_early_stopping_without_held_out_data_is_an_error_at_its_line(write_recipe):
    path = _write(write_recipe, eval="", extra="early_stopping:\n  metric: loss\n")
    with pytest.raises(RecipeError, match="needs held-out pairs: set data.eval or data.eval_split") as caught:
        load_recipe(path)
    assert caught.value.file == path and caught.value.line == 9 and caught.value.field == "early_stopping"


def test_early_stopping_without_evaluations_during_training_is_an_error(write_recipe):
    path = _write(write_recipe, trainer="", extra="early_stopping:\n  metric: loss\n")
    with pytest.raises(RecipeError, match="set trainer.eval_strategy: steps") as caught:
        load_recipe(path)
    assert caught.value.line == 9 and caught.value.field == "early_stopping"


def test_early_stopping_with_eval_strategy_no_is_an_error(write_recipe):
    with pytest.raises(RecipeError, match="needs evaluations during training"):
        load_recipe(_write(write_recipe, extra="early_stopping:\n  metric: loss\n"), ["trainer.eval_strategy='no'"])


def test_early_stopping_patience_must_be_positive(write_recipe):
    with pytest.raises(RecipeError, match="greater than or equal to 1") as caught:
        load_recipe(_write(write_recipe, extra="early_stopping:\n  metric: loss\n  patience: 0\n"))
    assert caught.value.field == "early_stopping.patience" and caught.value.line == 12


def test_early_stopping_unknown_key_suggests_the_right_one(write_recipe):
    with pytest.raises(RecipeError, match="did you mean 'patience'"):
        load_recipe(_write(write_recipe, extra="early_stopping:\n  metric: loss\n  patiense: 2\n"))


def test_plot_switch_from_the_command_line(write_recipe):
    assert load_recipe(_write(write_recipe), ["plot=false"]).plot is False
