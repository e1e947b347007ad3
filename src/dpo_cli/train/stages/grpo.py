"""GRPO stage: TRL's GRPOTrainer on prompts, scored by the recipe's reward functions (built-in, user, reward model)."""

from __future__ import annotations

from typing import Any

from dpo_cli.core.errors import RecipeError
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.models import load_sequence_classifier, load_tokenizer
from dpo_cli.train.rewards import SpecError, build_reward_functions
from dpo_cli.train.stages.base import ReferencePlan, Stage, StageInputs
from dpo_cli.train.stages.checks import check_loss_types, reward_specs


def config_class() -> type:
    from trl import GRPOConfig

    return GRPOConfig


def trainer_fields(recipe: Recipe) -> dict[str, Any]:
    """GRPOConfig fields that follow from the reward: section."""
    weights = recipe.reward.weights if recipe.reward is not None else None
    return {"reward_weights": weights} if weights is not None else {}


def validate(recipe: Recipe, error: ErrorAt) -> None:
    reward_specs(recipe, error)
    if recipe.reward.model or recipe.reward.value_model:
        raise error(("reward",), f"reward.model and reward.value_model are for ppo; in {recipe.stage} list the "
                    "reward model as a function: {reward_model: PATH}")
    check_loss_types(recipe, error, config_class())


def reference(recipe: Recipe) -> ReferencePlan:
    if not recipe.trainer.get("beta", 0.0):
        return ReferencePlan("none", "none: beta is 0 (TRL's default), so no KL penalty and no reference model")
    if recipe.lora is not None:
        return ReferencePlan("shared", "shared: beta > 0 adds a KL penalty to the policy with its LoRA adapter "
                                       "disabled")
    return ReferencePlan("trainer-copy", "frozen copy made by TRL: beta > 0 adds a KL penalty to the starting "
                                         "weights")


def reward_functions(inputs: StageInputs):
    """(functions, processing classes) from the reward: section; reward models load as sequence classifiers."""

    def load_reward_model(path: str):
        section = inputs.recipe.model.model_copy(update={"name_or_path": path, "tokenizer": None,
                                                         "chat_template": None})
        return load_sequence_classifier(section), load_tokenizer(section)

    specs = reward_specs(inputs.recipe, lambda path, message: RecipeError(message, field=".".join(map(str, path))))
    try:
        return build_reward_functions(specs, inputs.train_dataset.column_names, load_reward_model)
    except SpecError as exc:
        raise RecipeError(str(exc), field="reward.functions") from None


def build_trainer(inputs: StageInputs):
    from trl import GRPOTrainer

    functions, processing = reward_functions(inputs)
    return GRPOTrainer(model=inputs.model, reward_funcs=functions, args=inputs.args,
                       train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
                       processing_class=inputs.tokenizer, reward_processing_classes=processing,
                       callbacks=inputs.callbacks, peft_config=inputs.peft_config)


STAGE = Stage(
    name="grpo",
    config_class=config_class,
    build_trainer=build_trainer,
    data_kind="prompt",
    data_expects=("prompts: a prompt column (text or messages), plus any columns the reward functions read, such as "
                  "an answer"),
    reference=reference,
    uses_reward=True,
    validate=validate,
    trainer_fields=trainer_fields,
)
