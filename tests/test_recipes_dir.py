"""Every shipped recipe loads (pipelines too), says how to run it, and the GPU recipes pass --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO
from dpo_cli.core.builtins import resolve_builtin
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.recipe_pipeline import is_pipeline, load_pipeline
from dpo_cli.train.stages import unavailable
from helpers import run_cli

RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
GPU_RECIPES = sorted((REPO / "recipes" / "qwen2.5-0.5b").glob("*.yaml"))


def _uses_ppo(path) -> bool:
    return any(line.strip() == "stage: ppo" for line in path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_recipe_loads_and_says_how_to_run_it(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    relative = path.relative_to(REPO).as_posix()
    assert first.startswith("# ") and "dpo-cli" in first and relative in first, first
    if _uses_ppo(path) and unavailable("ppo"):
        pytest.skip("PPO needs trl<1.13 (pip install 'dpo-cli[ppo]'); test_ppo_recipes_name_the_extra covers it")
    load_pipeline(path) if is_pipeline(path) else load_recipe(path)


@pytest.mark.skipif(unavailable("ppo") is None, reason="this TRL still has PPO")
@pytest.mark.parametrize("path", [p for p in RECIPES if _uses_ppo(p)], ids=lambda p: p.name)
def test_ppo_recipes_name_the_extra(path):
    from dpo_cli.core.errors import RecipeError

    with pytest.raises(RecipeError, match=r"field '(stages\.\d+\.)?stage': stage ppo needs TRL's PPOTrainer.*"
                                          r"pip install 'dpo-cli\[ppo\]'"):
        load_pipeline(path) if is_pipeline(path) else load_recipe(path)


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: p.name)
def test_gpu_recipes_pass_dry_run(path, capsys, tmp_path):
    if _uses_ppo(path) and unavailable("ppo"):
        pytest.skip("PPO needs trl<1.13")
    # --dry-run reads and checks every row: give the recipe data this machine has (its own is the user's); a
    # reward that reads an answer gets the demo prompts with one (the dry run checks the column is there)
    data = "builtin:demo/train.jsonl"
    if "contains_answer" in path.read_text(encoding="utf-8"):
        demo = resolve_builtin(data)
        rows = [json.loads(line) for line in Path(demo).read_text(encoding="utf-8").splitlines()]
        data = tmp_path / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": row["prompt"], "answer": "4"}) + "\n" for row in rows))
    code, out, err = run_cli(capsys, "train", str(path), f"data.train={data}", "--dry-run")
    assert code == 0, err
    assert "dry run: no weights loaded" in out and "Qwen/Qwen2.5-0.5B-Instruct" in out
    if any(line.strip() == "stage: pairs" for line in path.read_text().splitlines()):
        assert "num_samples: 8" in out and "makes data, trains nothing" in out
    else:
        # read and checked, or read from the record of rows an earlier test prepared (the same key)
        assert "data       train: 404 rows " in out or (
            "kto" in path.name and "data       train: 808 rows " in out)  # KTO splits each pair
        assert "gradient_accumulation_steps" in out and "learning_rate" in out


def test_pipeline_dry_run_shows_every_stage(capsys):
    code, out, err = run_cli(capsys, "train", str(REPO / "recipes" / "tiny" / "pipeline-sft-dpo.yaml"), "--dry-run")
    assert code == 0, err
    assert "stage sft (sft)" in out and "stage dpo (dpo)" in out and "DPOConfig fields" in out
