"""RLOO stage: TRL's RLOOTrainer on prompts, scored by the same reward: section as GRPO (functions, reward models)."""

from __future__ import annotations

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import ReferencePlan, Stage, StageInputs
from dpo_cli.train.stages.checks import (
    PROMPT_DATA,
    build_scored_trainer,
    function_specs,
    group_sampling,
    setting,
    trainer_weights,
)


def config_class() -> type:
    from trl import RLOOConfig

    return RLOOConfig


def validate(recipe: Recipe, error: ErrorAt) -> None:
    function_specs(recipe, error)


def reference(recipe: Recipe) -> ReferencePlan:
    # RLOO's KL penalty is on by default (beta 0.05 in TRL 1.0 to 1.16), unlike GRPO's
    beta = setting(recipe, config_class(), "beta")
    if not beta:
        return ReferencePlan("none", "none: beta is 0, so no KL penalty and no reference model")
    if recipe.lora is not None:
        return ReferencePlan("shared", f"shared: beta {beta} adds a KL penalty to the policy with its LoRA adapter "
                                       "disabled")
    return ReferencePlan("trainer-copy", f"frozen copy made by TRL: beta {beta} adds a KL penalty to the starting "
                                         "weights (trainer.beta=0 drops it)")


def build_trainer(inputs: StageInputs):
    from trl import RLOOTrainer

    return build_scored_trainer(RLOOTrainer, inputs, function_specs)


STAGE = Stage(
    name="rloo",
    config_class=config_class,
    build_trainer=build_trainer,
    data_kind="prompt",
    data_expects=PROMPT_DATA,
    reference=reference,
    uses_reward=True,
    validate=validate,
    trainer_fields=trainer_weights,
    sampling=lambda recipe: group_sampling(recipe, config_class()),
)
