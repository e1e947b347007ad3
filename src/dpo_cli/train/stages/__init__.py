"""The training stages by name; each module defines one Stage (its TRL config, trainer call, data and reference)."""

from __future__ import annotations

from dpo_cli.train.stages import dpo, grpo, kto, ppo, reward, sft
from dpo_cli.train.stages.base import Stage

STAGES: dict[str, Stage] = {module.STAGE.name: module.STAGE for module in (sft, dpo, kto, reward, grpo, ppo)}


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> Stage:
    return STAGES[name]


def unavailable(name: str) -> str | None:
    """Why the installed libraries cannot run this stage, or None when they can."""
    return get_stage(name).unavailable()
