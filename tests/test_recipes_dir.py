"""Every shipped recipe loads, and its first line is the command that runs it."""

from __future__ import annotations

import pytest

from conftest import REPO
from dpo_cli.recipe import load_recipe

RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_recipe_loads_and_says_how_to_run_it(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    relative = path.relative_to(REPO).as_posix()
    assert first.startswith("# ") and "dpo-cli" in first and relative in first, first
    load_recipe(path)
