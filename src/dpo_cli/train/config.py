"""A recipe onto its stage's TRL config: device fields, fields our sections decide, then the trainer: section."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from dpo_cli.core.errors import RecipeError
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.trl_fields import config_fields
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.device import DevicePlan
from dpo_cli.train.stages import get_stage, training_stage
from dpo_cli.train.stages.base import Default, PlannedRun, TrainingStage
from dpo_cli.train.trackers import check_trackers

_NAMED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def trainer_kwargs(recipe: Recipe, plan: DevicePlan) -> dict[str, Any]:
    """The keyword arguments of the stage's TRL config; an explicit trainer: key always wins."""
    derived = training_stage(recipe.stage).trainer_fields(recipe)
    return {"report_to": "none", **plan.trainer_fields(), **derived, **recipe.trainer,
            "output_dir": recipe.output_dir, "seed": recipe.seed}


def settle_defaults(recipe: Recipe, run: PlannedRun) -> tuple[Recipe, list[Default]]:
    """The recipe with the keys its stage decides per run written in (a precomputed reference, Liger kernels), and
    each decision with its reason. A key the recipe set itself is never changed. A stage that makes data settles
    nothing."""
    stage = get_stage(recipe.stage)
    defaults = stage.settle(recipe, run) if isinstance(stage, TrainingStage) else []
    for default in defaults:
        if default.explicit:
            continue
        section, key = default.key.split(".", 1)
        if section == "trainer" and not default.value:
            continue  # off is TRL's own default: the recipe and recipe.resolved.yaml stay as written
        if section == "trainer":
            recipe = recipe.model_copy(update={"trainer": {**recipe.trainer, key: default.value}})
        else:
            part = getattr(recipe, section)
            recipe = recipe.model_copy(update={section: part.model_copy(update={key: default.value})})
    return recipe, defaults


def defaults_record(defaults: list[Default]) -> dict[str, Any]:
    """What run.json keeps of the run's defaults."""
    return {d.key: {"value": d.value, "reason": d.reason, "set_by_recipe": d.explicit} for d in defaults}


def defaults_note(defaults: list[Default]) -> str | None:
    """One line for the console naming what dpo-cli turned on for this run, and why (--dry-run shows every choice)."""
    chosen = [f"{d.key}=true ({d.reason})" for d in defaults if not d.explicit and d.value is True]
    return "chosen for this run: " + "; ".join(chosen) if chosen else None


def build_config(recipe: Recipe, plan: DevicePlan, error: ErrorAt | None = None):
    """The stage's TRL config. TRL's own cross-field checks (loss_weights against loss_type, ...) that fail are the
    recipe's fault: with ``error`` they point at the trainer key TRL names, else at the trainer: section."""
    check_trackers(recipe.trainer.get("report_to"))
    config_class = training_stage(recipe.stage).config_class()
    kwargs = trainer_kwargs(recipe, plan)
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():  # planning for a GPU (--gpu-memory) from a machine without one
            kwargs.update(bf16=False, fp16=False, use_cpu=True)  # TRL's checks then run as on this machine
    try:
        return config_class(**kwargs)
    except (ValueError, TypeError) as exc:
        message = f"{config_class.__name__} rejected the trainer: section: {exc}"
        named = next((name for name in _NAMED.findall(str(exc)) if name in recipe.trainer), None)
        if error is None:
            raise RecipeError(message, field=f"trainer.{named}" if named else "trainer") from None
        raise error(("trainer", named) if named else ("trainer",), message) from None


def planned_config(recipe: Recipe, plan: DevicePlan) -> SimpleNamespace:
    """The stage's TRL config as a dry run plans from it, without importing TRL: its fields' defaults, from the cache
    of TRL's config fields (recipe/trl_fields.py), under the keyword arguments build_config would pass. TRL's own
    ``__post_init__`` does not run: its cross-field checks, and the few values it derives (report_to as a list,
    GRPO's generation batch; no plan reads them), wait for the run's build_config."""
    check_trackers(recipe.trainer.get("report_to"))
    defaults = config_fields(training_stage(recipe.stage).config).defaults
    return SimpleNamespace(**{**defaults, **trainer_kwargs(recipe, plan)})
