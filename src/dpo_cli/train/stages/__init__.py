"""The stages by name; each module defines one Stage (its TRL config and trainer call, or the data it makes)."""

from __future__ import annotations

from dpo_cli.train.stages import cpo, dpo, grpo, kto, online_dpo, orpo, pairs, ppo, reward, rloo, sft, simpo
from dpo_cli.train.stages.base import Stage

STAGES: dict[str, Stage] = {module.STAGE.name: module.STAGE for module in (
    sft, dpo, kto, orpo, simpo, cpo, reward, grpo, rloo, online_dpo, ppo, pairs)}


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> Stage:
    return STAGES[name]


def unavailable(name: str) -> str | None:
    """Why the installed libraries cannot run this stage, or None when they can."""
    return get_stage(name).unavailable()
