"""The tiny LoRA and QLoRA recipes load, and each one's first line is the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_cli.train.recipe_load import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "tiny").glob("dpo-*lora.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_tiny_model_recipes_load(tiny_model, path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# dpo-cli train recipes/tiny/{path.name}"
    recipe = load_recipe(path)
    assert recipe.lora is not None
    if "qlora" in path.name:
        assert recipe.quantization.bits == 4 and recipe.ref_model.precompute


def test_both_recipes_present():
    assert [p.name for p in RECIPES] == ["dpo-lora.yaml", "dpo-qlora.yaml"]
