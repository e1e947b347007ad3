"""One plan per run: --dry-run prints a RunPlan (text and JSON from the same object), and train builds its TRL config
once, after the data has settled the run's defaults."""

from __future__ import annotations

import json

import pytest

from dpo_cli.core.errors import DataError
from dpo_cli.runner.run import plan, train
from dpo_cli.train.recipe_load import load_recipe
from helpers import run_cli

RECIPE = """\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: {train}, eval: builtin:demo/eval.jsonl}}
trainer:
  max_steps: 2
  logging_steps: 1
  per_device_train_batch_size: 4
  max_length: 64
  gradient_checkpointing: false
  save_strategy: "no"
output_dir: {out}
"""


@pytest.fixture
def configs_built(monkeypatch) -> list:
    """Every DPOConfig built from here on, in order (a plain TrainingArguments is not one)."""
    from trl import DPOConfig

    built: list = []
    original = DPOConfig.__post_init__

    def counted(self):
        built.append(self)
        original(self)

    monkeypatch.setattr(DPOConfig, "__post_init__", counted)
    return built


def test_the_dry_run_prints_the_plan_the_run_would_have_and_builds_its_config_once(
        tiny_model, write_recipe, tmp_path, cpu_only, capsys, configs_built):
    path = write_recipe(RECIPE.format(train="builtin:demo/train.jsonl", out=tmp_path / "out"))
    recipe = load_recipe(path)
    configs_built.clear()  # the load checks the trainer: section through TRL once; the plan is counted from here

    run_plan, data_error = plan(recipe, processes=2)

    assert data_error is None and len(configs_built) == 1 and run_plan.config is configs_built[0]
    assert run_plan.recipe is recipe and run_plan.config_class == "DPOConfig"
    assert run_plan.config.max_steps == 2 and run_plan.config_fields["max_steps"] == 2
    assert run_plan.global_batch == {"per_device": 4, "accumulation": 1, "processes": 2, "rows": 8}
    assert run_plan.data["train"]["rows"] > 0 and run_plan.memory.total > 0
    # --json is that plan as json.dumps writes it: the same keys and values
    code, out, _ = run_cli(capsys, "train", str(path), "--dry-run", "--json", "--nproc", "2")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(run_plan.to_json(), default=str))
    assert not (tmp_path / "out").exists()


def test_data_the_run_would_stop_at_comes_back_beside_the_plan(tiny_model, write_recipe, tmp_path, cpu_only):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n', encoding="utf-8")  # no rejected answer
    recipe = load_recipe(write_recipe(RECIPE.format(train=bad, out=tmp_path / "out")))

    run_plan, data_error = plan(recipe)

    assert isinstance(data_error, DataError) and "rejected" in str(data_error) and str(bad) in str(data_error)
    # the plan still stands: its config and device, with no data counted
    assert run_plan.config_class == "DPOConfig" and run_plan.device.device == "cpu" and run_plan.data == {}


@pytest.mark.slow
def test_a_run_builds_its_trl_config_once_after_the_defaults_are_settled(tiny_model, write_recipe, tmp_path,
                                                                         cpu_only, configs_built):
    out = tmp_path / "out"
    recipe = load_recipe(write_recipe(RECIPE.format(train="builtin:demo/train.jsonl", out=out)))
    configs_built.clear()

    result = train(recipe)

    assert result.manifest["status"] == "completed" and result.manifest["global_step"] == 2
    assert len(configs_built) == 1, "the run built its TRL config more than once"
    # the config the run trained with carries the defaults settled from its data, as run.json records them
    defaults = result.manifest["defaults"]
    assert configs_built[0].precompute_ref_log_probs is defaults["ref_model.precompute"]["value"]


def test_a_run_freezes_what_is_loaded_after_collecting_garbage_and_hands_it_back():
    """The cycle collector skips the objects alive when a run starts (the imports), but garbage waiting then, such as
    an earlier pipeline stage's trainer in a reference cycle, is freed first, and nothing stays frozen afterwards."""
    import gc
    import weakref

    from dpo_cli.runner.run import collector_skips_what_is_loaded

    class Stage:
        pass

    earlier = Stage()
    earlier.myself = earlier  # a cycle: only the collector frees it
    gone = weakref.ref(earlier)
    del earlier
    alive = Stage()
    before = gc.get_freeze_count()
    with collector_skips_what_is_loaded():
        assert gone() is None
        assert gc.get_freeze_count() > before and alive is not None
    assert gc.get_freeze_count() == before
