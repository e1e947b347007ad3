"""The two stage contracts: a stage trains or makes data, and says only what its kind has."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dpo_cli.train.device import plan_device
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.stages import STAGES, training_stage
from dpo_cli.train.stages.base import DataStage, Stage, TrainingStage

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny"


def _fields(kind: type) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


def test_pairs_makes_data_and_every_other_stage_trains():
    kinds = {name: type(stage) for name, stage in STAGES.items()}
    assert kinds == {name: DataStage if name == "pairs" else TrainingStage for name in STAGES}
    assert [name for name, stage in STAGES.items() if not stage.trains] == ["pairs"]
    # the data-making stage carries no trainer's field for a caller to read a default off
    training_only = _fields(TrainingStage) - _fields(Stage)
    assert {"config", "build_trainer", "sequences_per_row", "evaluation", "step_loop", "uses_ref_model", "resumable",
            "settle", "reference_cache", "trainer_fields", "policy"} <= training_only
    assert not any(hasattr(STAGES["pairs"], name) for name in training_only)
    assert _fields(DataStage) - _fields(Stage) == {"make_data"}


def test_a_stage_must_name_what_its_kind_needs():
    """Keyword-only fields: a training stage without its TRL config or trainer, or a data stage without its flow, is
    refused when the module is imported, not when a run reaches the missing hook."""
    common = {"name": "x", "data_kind": "sft", "data_expects": "rows", "no_images": lambda: None}
    with pytest.raises(TypeError, match="config"):
        TrainingStage(**common, build_trainer=lambda inputs: None)
    with pytest.raises(TypeError, match="build_trainer"):
        TrainingStage(**common, config="trl:SFTConfig")
    with pytest.raises(TypeError, match="make_data"):
        DataStage(**common)
    with pytest.raises(TypeError, match="TrainingStage or a DataStage"):  # a stage is of one kind
        Stage(**common)
    with pytest.raises(TypeError, match="no_images"):  # every stage says whether it takes images
        DataStage(name="x", data_kind="prompt", data_expects="prompts", make_data=lambda recipe, overwrite=False: None)


def test_code_for_training_stages_refuses_a_data_stage():
    assert training_stage("dpo") is STAGES["dpo"]
    with pytest.raises(TypeError, match="stage pairs makes data"):
        training_stage("pairs")


def test_a_data_stage_recipe_is_planned_without_a_trainers_facts(tmp_path, tiny_model):
    """The paths that meet any stage (settled defaults, the memory plan, the sweep's precompute) branch on the kind."""
    from dpo_cli.runner.sweep import _with_precompute
    from dpo_cli.train.config import settle_defaults
    from dpo_cli.train.memory import inputs_for
    from dpo_cli.train.stages.base import PlannedRun

    path = TINY / "pairs.yaml"
    recipe = load_recipe(path, [f"output_dir={tmp_path / 'out'}"])
    plan = plan_device(recipe.trainer)
    assert settle_defaults(recipe, PlannedRun(plan, 1, lambda: None)) == (recipe, [])
    assert _with_precompute(path, [f"output_dir={tmp_path / 'out'}"], recipe) is None
    planned = inputs_for(recipe, plan)
    assert not planned.trains and planned.sequences_per_row == 0 and planned.sampling_rows
