"""Recipe loading, dotted overrides, and one test per bad recipe input."""

from __future__ import annotations

import pytest

from dpo_cli.core.errors import RecipeError
from dpo_cli.recipe.yamlfile import parse_scalar
from dpo_cli.train.recipe_load import load_recipe

BASE = """\
stage: dpo
model:
  name_or_path: builtin:tiny-chat
data:
  train: builtin:demo/train.jsonl
trainer:
  beta: 0.1
  max_steps: 3
output_dir: {out}
"""


@pytest.fixture
def base(write_recipe, tmp_path):
    return write_recipe(BASE.format(out=tmp_path / "run"))


def test_loads_sections_and_defaults(base):
    recipe = load_recipe(base)
    assert recipe.stage == "dpo"
    assert recipe.model.dtype == "auto" and recipe.model.trust_remote_code is False
    assert recipe.data.train == ["builtin:demo/train.jsonl"]
    assert recipe.trainer == {"beta": 0.1, "max_steps": 3}
    assert recipe.seed == 42


def test_output_dir_defaults_to_runs_slash_recipe_name(write_recipe):
    recipe = load_recipe(write_recipe(BASE.replace("output_dir: {out}\n", ""), name="my-run.yaml"))
    assert recipe.output_dir == "runs/my-run"


def test_overrides_are_yaml_scalars(base):
    recipe = load_recipe(base, ["trainer.beta=0.2", "trainer.learning_rate=5e-6", "output_dir=/tmp/x",
                                "trainer.loss_type=[sigmoid, sft]", "model.trust_remote_code=true", "seed=7"])
    assert recipe.trainer["beta"] == 0.2
    assert recipe.trainer["learning_rate"] == 5e-6 and isinstance(recipe.trainer["learning_rate"], float)
    assert recipe.trainer["loss_type"] == ["sigmoid", "sft"]
    assert recipe.output_dir == "/tmp/x" and recipe.seed == 7 and recipe.model.trust_remote_code is True


def test_exponent_floats_in_the_file_are_floats(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(BASE.format(out=tmp_path).replace("beta: 0.1", "learning_rate: 1e-5")))
    assert recipe.trainer["learning_rate"] == 1e-5


@pytest.mark.parametrize("text, expected", [("5e-6", 5e-6), ("1E3", 1000.0), ("true", True), ("abc", "abc"),
                                            ("[a, b]", ["a", "b"]), ("3", 3), ("", "")])
def test_parse_scalar(text, expected):
    assert parse_scalar(text) == expected


def _error(path, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_missing_recipe_file(tmp_path):
    message = _error(tmp_path / "nope.yaml")
    assert "recipe file not found" in message and "nope.yaml" in message


def test_yaml_syntax_error_names_line_and_column(write_recipe):
    path = write_recipe("stage: dpo\nmodel:\n  name_or_path: [unclosed\n")
    message = _error(path)
    assert f"{path}:4" in message or f"{path}:3" in message
    assert "YAML syntax error at column" in message


def test_unknown_stage_suggests(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path).replace("stage: dpo", "stage: dop"))
    message = _error(path)
    assert f"{path}:1: field 'stage': unknown stage 'dop'; did you mean 'dpo'?" == message


def test_unknown_key_suggests_with_line(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path).replace("  name_or_path: builtin:tiny-chat",
                                                          "  name_or_path: builtin:tiny-chat\n  dtyp: bfloat16"))
    assert _error(path) == f"{path}:4: field 'model.dtyp': unknown key 'dtyp'; did you mean 'dtype'?"


def test_unknown_top_level_key(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path) + "sed: 3\n")
    assert _error(path) == f"{path}:10: field 'sed': unknown key 'sed'; did you mean 'seed'?"


def test_wrong_type_names_file_and_line(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path) + "seed: lots\n")
    message = _error(path)
    assert message.startswith(f"{path}:10: field 'seed': ") and "'lots'" in message


def test_wrong_choice_names_line(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path).replace("  name_or_path: builtin:tiny-chat",
                                                          "  name_or_path: builtin:tiny-chat\n  dtype: fp8"))
    assert _error(path).startswith(f"{path}:4: field 'model.dtype': ")


def test_trainer_key_the_trl_config_lacks(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path).replace("beta: 0.1", "betta: 0.1"))
    assert _error(path) == f"{path}:7: field 'trainer.betta': DPOConfig has no field 'betta'; did you mean 'beta'?"


def test_trainer_value_of_wrong_type(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path).replace("beta: 0.1", "beta: high"))
    message = _error(path)
    assert message.startswith(f"{path}:7: field 'trainer.beta': ") and "'high'" in message


def test_trainer_keys_the_recipe_owns(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path).replace("beta: 0.1", "output_dir: /elsewhere"))
    assert "set output_dir at the top level" in _error(path)


def test_bad_override_names_the_override(base):
    message = _error(base, ["trainer.beta=high"])
    assert message.startswith("command-line override 'trainer.beta=high': field 'trainer.beta'")


def test_override_without_equals(base):
    assert "is not of the form section.key=value" in _error(base, ["trainer.beta"])


def test_eval_and_eval_split_conflict(write_recipe, tmp_path):
    path = write_recipe(BASE.format(out=tmp_path).replace(
        "  train: builtin:demo/train.jsonl", "  train: builtin:demo/train.jsonl\n  eval: x.jsonl\n  eval_split: 0.1"))
    assert "give either data.eval or data.eval_split, not both" in _error(path)


def test_missing_required_section(write_recipe, tmp_path):
    path = write_recipe("stage: dpo\nmodel:\n  name_or_path: x\noutput_dir: o\n")
    assert "field 'data': required key is missing" in _error(path)
