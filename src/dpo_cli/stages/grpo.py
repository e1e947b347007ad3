"""GRPO stage: TRL's GRPOTrainer on prompts, scored by the recipe's reward functions (built-in, user, reward model)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "prompt"
DATA_EXPECTS = ("prompts: a prompt column (text or messages), plus any columns the reward functions read, such as "
                "an answer")
USES_REWARD = True


def config_class() -> type:
    from trl import GRPOConfig

    return GRPOConfig


def trainer_fields(recipe) -> dict[str, Any]:
    """GRPOConfig fields that follow from the reward: section."""
    weights = recipe.reward.weights if recipe.reward is not None else None
    return {"reward_weights": weights} if weights is not None else {}


def _specs(recipe, error):
    from ..rewards import SpecError, parse_spec

    specs = []
    for i, entry in enumerate(recipe.reward.functions):
        try:
            spec = parse_spec(entry)
            if not spec.builtin:
                from ..rewards import load_user_function

                load_user_function(spec.name)  # a missing file, module or function fails now, not mid-run
        except SpecError as exc:
            raise error(("reward", "functions", i), str(exc)) from None
        specs.append(spec)
    return specs


def validate_recipe(recipe, error) -> None:
    from trl import GRPOTrainer

    from .dpo import check_loss_types

    if recipe.reward is None or not recipe.reward.functions:
        raise error(("reward",), "stage grpo needs reward functions: reward: {functions: [...]} with built-ins "
                    "(length, regex, contains_answer, reward_model) or module:function entries")
    if recipe.reward.weights is not None and "reward_weights" in recipe.trainer:
        raise error(("trainer", "reward_weights"), "set the weights once: reward.weights or trainer.reward_weights")
    if recipe.reward.model or recipe.reward.value_model:
        raise error(("reward",), "reward.model and reward.value_model are for ppo; in grpo list the reward model "
                    "as a function: {reward_model: PATH}")
    _specs(recipe, error)
    check_loss_types(recipe, error, GRPOTrainer)


def reference_strategy(recipe) -> str:
    if recipe.trainer.get("beta", 0.0):
        return "frozen copy made by TRL: beta > 0 adds a KL penalty to the starting weights"
    return "none: beta is 0 (TRL's default), so no KL penalty and no reference model"


def _reward_model_loader(inputs: StageInputs):
    def load(path: str):
        from ..models import load_sequence_classifier, load_tokenizer
        from ..recipe import ModelSection

        section = ModelSection(name_or_path=path, trust_remote_code=inputs.recipe.model.trust_remote_code)
        return load_sequence_classifier(section), load_tokenizer(section)

    return load


def build_trainer(inputs: StageInputs):
    from trl import GRPOTrainer

    from ..errors import RecipeError
    from ..rewards import SpecError, build_reward_functions

    recipe = inputs.recipe
    specs = _specs(recipe, lambda path, message: RecipeError(message, field=".".join(map(str, path))))
    try:
        functions, processing = build_reward_functions(specs, inputs.train_dataset.column_names,
                                                       _reward_model_loader(inputs))
    except SpecError as exc:
        raise RecipeError(str(exc), field="reward.functions") from None
    return GRPOTrainer(model=inputs.model, reward_funcs=functions, args=inputs.args,
                       train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
                       processing_class=inputs.tokenizer, reward_processing_classes=processing,
                       callbacks=inputs.callbacks, peft_config=inputs.peft_config)
