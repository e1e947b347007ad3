"""RLOO stage: TRL's RLOOTrainer on prompts, scored by the same reward: section as GRPO (functions, reward models)."""

from __future__ import annotations

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import StageInputs, TrainingStage
from dpo_cli.train.stages.checks import (
    PROMPT_DATA,
    build_scored_trainer,
    check_beta,
    function_specs,
    group_sampling,
    kl_reference,
    trainer_weights,
)

CONFIG = "trl:RLOOConfig"



def validate(recipe: Recipe, error: ErrorAt) -> None:
    function_specs(recipe, error)
    check_beta(recipe, error, zero_means="turns the KL penalty to the reference off")


def build_trainer(inputs: StageInputs):
    from trl import RLOOTrainer

    return build_scored_trainer(RLOOTrainer, inputs, function_specs)


STAGE = TrainingStage(
    name="rloo",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="prompt",
    data_expects=PROMPT_DATA,
    reference=lambda recipe: kl_reference(recipe, CONFIG),
    uses_reward=True,
    validate=validate,
    trainer_fields=trainer_weights,
    sampling=lambda recipe: group_sampling(recipe, CONFIG),
    # TRL's RLOOTrainer takes the prompt rows' images column and the processor (TRL 1.0 and 1.16); a reward model
    # reads the prompts as text (checks.build_scored_trainer)
    no_images=lambda: None,
)
