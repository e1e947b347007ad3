"""The stages by name; each module defines one STAGE: a TrainingStage (its TRL config and trainer call) or a
DataStage (the data it makes)."""

from __future__ import annotations

from dpo_cli.train.stages import cpo, dpo, grpo, kto, online_dpo, orpo, pairs, ppo, reward, rloo, sft, simpo
from dpo_cli.train.stages.base import Stage, TrainingStage

STAGES: dict[str, Stage] = {module.STAGE.name: module.STAGE for module in (
    sft, dpo, kto, orpo, simpo, cpo, reward, grpo, rloo, online_dpo, ppo, pairs)}


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> Stage:
    return STAGES[name]


def training_stage(name: str) -> TrainingStage:
    """The stage of a recipe that trains: for code that only runs for one (its TRL config, its trainer). Asked for a
    stage that makes data, it fails: a caller that can meet one branches on ``stage.trains`` first."""
    stage = STAGES[name]
    if not isinstance(stage, TrainingStage):
        raise TypeError(f"stage {name} makes data and has no trainer; runner/pipeline.py runs its own flow")
    return stage


def unavailable(name: str) -> str | None:
    """Why the installed libraries cannot run this stage, or None when they can."""
    return get_stage(name).unavailable()
