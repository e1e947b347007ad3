"""A recipe onto its stage's TRL config: device fields, fields our sections decide, then the trainer: section."""

from __future__ import annotations

import re
from typing import Any

from dpo_cli.core.errors import RecipeError
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.device import DevicePlan
from dpo_cli.train.stages import get_stage
from dpo_cli.train.trackers import check_trackers

_NAMED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def trainer_kwargs(recipe: Recipe, plan: DevicePlan) -> dict[str, Any]:
    """The keyword arguments of the stage's TRL config; an explicit trainer: key always wins."""
    derived = get_stage(recipe.stage).trainer_fields(recipe)
    return {"report_to": "none", **plan.trainer_fields(), **derived, **recipe.trainer,
            "output_dir": recipe.output_dir, "seed": recipe.seed}


def build_config(recipe: Recipe, plan: DevicePlan, error: ErrorAt | None = None):
    """The stage's TRL config. TRL's own cross-field checks (loss_weights against loss_type, ...) that fail are the
    recipe's fault: with ``error`` they point at the trainer key TRL names, else at the trainer: section."""
    check_trackers(recipe.trainer.get("report_to"))
    config_class = get_stage(recipe.stage).config_class()
    try:
        return config_class(**trainer_kwargs(recipe, plan))
    except (ValueError, TypeError) as exc:
        message = f"{config_class.__name__} rejected the trainer: section: {exc}"
        named = next((name for name in _NAMED.findall(str(exc)) if name in recipe.trainer), None)
        if error is None:
            raise RecipeError(message, field=f"trainer.{named}" if named else "trainer") from None
        raise error(("trainer", named) if named else ("trainer",), message) from None
