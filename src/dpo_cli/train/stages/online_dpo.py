"""Online DPO stage: trl.experimental.online_dpo's trainer on prompts; two samples of the policy per prompt, the judge
(a reward model or reward functions) picks chosen and rejected."""

from __future__ import annotations

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import ASSUMED_PROMPT_TOKENS, ReferencePlan, SamplingPlan, StageInputs, TrainingStage
from dpo_cli.train.stages.checks import (
    PROMPT_DATA,
    build_scored_trainer,
    check_beta,
    check_loss_types,
    judge_specs,
    missing_experimental,
    reward_model_paths,
    setting,
    trainer_weights,
)
from dpo_cli.train.trl_compat import online_dpo_takes_images

MODULE = "trl.experimental.online_dpo"


CONFIG = "trl.experimental.online_dpo:OnlineDPOConfig"



def validate(recipe: Recipe, error: ErrorAt) -> None:
    # TRL's own ways to name a judge (OnlineDPOConfig.judge exists in TRL 1.0, gone by 1.16)
    for key in ("reward_model_path", "judge"):
        if key in recipe.trainer:
            raise error(("trainer", key), f"set the judge with reward.model or reward.functions, not trainer.{key}")
    judge_specs(recipe, error)
    check_loss_types(recipe, error, CONFIG)
    check_beta(recipe, error)


def reference(recipe: Recipe) -> ReferencePlan:
    if recipe.lora is not None:
        return ReferencePlan("shared", "shared: the policy with its LoRA adapter disabled, no second copy in memory")
    return ReferencePlan("trainer-copy", "frozen copy of the starting weights, made by TRL")


def sampling(recipe: Recipe) -> SamplingPlan:
    """Two completions per prompt, generated together for the whole batch."""
    new_tokens = setting(recipe, CONFIG, "max_new_tokens")
    return SamplingPlan(2 * setting(recipe, CONFIG, "per_device_train_batch_size"), ASSUMED_PROMPT_TOKENS + new_tokens,
                        reward_model_paths(recipe))


def no_images() -> str | None:
    """Online DPO takes image prompts (one image each) where this TRL's OnlineDPOTrainer generates from them."""
    if online_dpo_takes_images():
        return None
    from importlib import metadata

    return (f"TRL {metadata.version('trl')}'s OnlineDPOTrainer has no working image path (up to TRL 1.15 it runs the "
            f"processor on the images with empty prompts, which fails at the first step); TRL 1.16 "
            f"takes one image with each prompt: pip install 'trl>=1.16'")


def build_trainer(inputs: StageInputs):
    from trl.experimental.online_dpo import OnlineDPOTrainer

    return build_scored_trainer(OnlineDPOTrainer, inputs, judge_specs)


STAGE = TrainingStage(
    name="online-dpo",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="prompt-one-image",  # TRL reads one image with each prompt, from an image column
    data_expects=PROMPT_DATA,
    reference=reference,
    sequences_per_row=lambda recipe: 2,  # the two samples of each prompt go through the model together
    uses_reward=True,
    validate=validate,
    trainer_fields=trainer_weights,
    unavailable=lambda: missing_experimental("online-dpo", MODULE, "OnlineDPOTrainer"),
    sampling=sampling,
    no_images=no_images,
    # the TRL that takes image prompts (1.16) never cuts one: it cuts text prompts to max_length only
    # (tests/test_trl_compat.py holds it to that)
    image_prompt_limit=lambda config: None,
)
