"""GRPO stage: TRL's GRPOTrainer on prompts, scored by the recipe's reward functions (built-in, user, reward model)."""

from __future__ import annotations

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import StageInputs, TrainingStage
from dpo_cli.train.stages.checks import (
    PROMPT_DATA,
    build_scored_trainer,
    check_beta,
    check_loss_types,
    function_specs,
    group_sampling,
    kl_reference,
    trainer_weights,
)

CONFIG = "trl:GRPOConfig"



def validate(recipe: Recipe, error: ErrorAt) -> None:
    function_specs(recipe, error)
    check_loss_types(recipe, error, CONFIG)
    check_beta(recipe, error, zero_means="turns the KL penalty to the reference off (TRL's default)")


def build_trainer(inputs: StageInputs):
    from trl import GRPOTrainer

    return build_scored_trainer(GRPOTrainer, inputs, function_specs)


STAGE = TrainingStage(
    name="grpo",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="prompt",
    data_expects=PROMPT_DATA,
    reference=lambda recipe: kl_reference(recipe, CONFIG),
    uses_reward=True,
    validate=validate,
    trainer_fields=trainer_weights,
    sampling=lambda recipe: group_sampling(recipe, CONFIG),
    # TRL's GRPOTrainer takes the prompt rows' images column and the processor (TRL 1.0 and 1.16); a reward model
    # reads the prompts as text (checks.build_scored_trainer)
    no_images=lambda: None,
)
