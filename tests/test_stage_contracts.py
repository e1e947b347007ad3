"""The two stage contracts (a stage trains or makes data, and says only what its kind has) and the one run lifecycle
that a training run and a data-making run both go through."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from dpo_cli.core.errors import InputError
from dpo_cli.core.paths import LOCK
from dpo_cli.train.device import plan_device
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.stages import STAGES, training_stage
from dpo_cli.train.stages.base import DataStage, Stage, TrainingStage

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny"
SRC = REPO / "src" / "dpo_cli"


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


# --- one lifecycle ---------------------------------------------------------------------------------------------------

# what open_run does; RunRecord may still be named as the type of the record open_run yields, but not made
LIFECYCLE_PARTS = {"check_output_dir", "RunRecord", "run_lock", "start_manifest", "check_shared_folder"}


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id != "RunRecord"} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names if a.name != "RunRecord"} | \
        ({"RunRecord"} & called)


def test_training_and_making_data_open_the_run_through_one_function():
    """Neither run.py nor the pairs stage repeats the lifecycle's parts: both import open_run from train/manifest."""
    from dpo_cli.runner import run
    from dpo_cli.train import manifest
    from dpo_cli.train.stages import pairs

    assert run.open_run is pairs.open_run is manifest.open_run
    for path in (SRC / "runner" / "run.py", SRC / "train" / "stages" / "pairs.py"):
        assert "open_run" in _names(path) and not _names(path) & LIFECYCLE_PARTS, path


class _Opened(Exception):
    pass


def test_train_and_make_pairs_both_call_open_run(tmp_path, monkeypatch, tiny_model):
    """Each path reaches the lifecycle with its run's facts (one process here); the stub stops it there."""
    from dpo_cli.runner import run
    from dpo_cli.train.stages import pairs

    calls = []

    def opened(recipe, plan, processes, is_main, *, overwrite, resuming=False):
        calls.append((recipe.stage, recipe.output_dir, processes, is_main, overwrite, resuming))
        raise _Opened

    monkeypatch.setattr(run, "open_run", opened)
    monkeypatch.setattr(pairs, "open_run", opened)
    trained = load_recipe(TINY / "dpo.yaml", [f"output_dir={tmp_path / 'dpo'}", f"model.name_or_path={tiny_model}"])
    made = load_recipe(TINY / "pairs.yaml", [f"output_dir={tmp_path / 'pairs'}", f"model.name_or_path={tiny_model}"])
    with pytest.raises(_Opened):
        run.train(trained, overwrite=True)
    with pytest.raises(_Opened):
        pairs.make_pairs(made)
    assert calls == [("dpo", str(tmp_path / "dpo"), 1, True, True, False),
                     ("pairs", str(tmp_path / "pairs"), 1, True, False, False)]


def test_open_run_checks_output_dir_records_the_run_and_holds_the_lock(tmp_path, tiny_model):
    from dpo_cli.train.manifest import open_run

    out = tmp_path / "out"
    recipe = load_recipe(TINY / "pairs.yaml", [f"output_dir={out}"])
    plan = plan_device(recipe.trainer)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"), open_run(recipe, plan, 1, True, overwrite=False):
        pass
    (out / "notes.txt").unlink()

    with pytest.raises(RuntimeError, match="boom"), open_run(recipe, plan, 1, True, overwrite=False) as (run, record):
        assert run.path == out and (out / LOCK).exists()
        record.update()
        assert json.loads((out / "run.json").read_text())["status"] == "running"
        raise RuntimeError("boom")
    written = json.loads((out / "run.json").read_text())
    assert written["status"] == "failed" and written["error"] == "boom" and written["stage"] == "pairs"
    assert not (out / LOCK).exists()  # released on the way out
