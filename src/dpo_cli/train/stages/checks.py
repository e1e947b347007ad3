"""What more than one stage shares: loss types the installed TRL knows, and the reward: section as a judge (checked at
load, built as TRL's reward functions at run time)."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable
from importlib import metadata
from typing import Any

from dpo_cli.core.errors import RecipeError
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.trl_fields import config_fields, import_config, trl_fact, versions
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.models import load_sequence_classifier, load_tokenizer
from dpo_cli.train.rewards import (
    RewardSpec,
    SpecError,
    TextPrompts,
    build_reward_functions,
    load_user_function,
    parse_spec,
)
from dpo_cli.train.stages.base import ASSUMED_PROMPT_TOKENS, ReferencePlan, SamplingPlan, StageInputs
from dpo_cli.train.trl_compat import field_choices

# The TRL releases the experimental stages are tested on (CI's lowest and newest TRL).
CHECKED_TRL = ("1.0.0", "1.16.0")


def raise_at_field(path, message: str) -> RecipeError:
    """An ErrorAt for checks repeated at run time, when the recipe's lines are no longer at hand."""
    return RecipeError(message, field=".".join(map(str, path)))


def setting(recipe: Recipe, config: str, name: str) -> Any:
    """A trainer: value, or the default of the installed TRL's config ``module:Class`` (read from the cache of its
    fields, without TRL)."""
    return recipe.trainer[name] if name in recipe.trainer else config_fields(config).defaults.get(name)


def missing_experimental(stage: str, module: str, trainer: str) -> str | None:
    """Why the installed TRL cannot run an experimental trainer (they move or go between minor versions), or None."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if found:
        return None
    return (f"stage {stage} needs TRL's {trainer} ({module}), which this environment's trl {metadata.version('trl')} "
            f"does not have; TRL {' and '.join(CHECKED_TRL)} have it (experimental trainers move or go between minor "
            f"versions): pip install 'trl=={CHECKED_TRL[-1]}'")


def check_loss_types(recipe: Recipe, error: ErrorAt, config: str) -> list[str]:
    """Each trainer.loss_type must be one the installed TRL lists for its config ``module:Class``; returns the names
    given. The list is read from TRL once per installed version (a cached fact), so the check imports no TRL after.

    Fails closed: when the config's loss types cannot be read, a recipe that sets one is refused rather than passed on
    to fail mid-run.
    """
    given = recipe.trainer.get("loss_type")
    if given is None:
        return []
    given = [given] if isinstance(given, str) else list(given)
    known = trl_fact(f"{config} loss_type choices", lambda: field_choices(import_config(config), "loss_type"))
    trl = f"TRL {versions()['trl']}"
    if not known:
        raise error(("trainer", "loss_type"), f"cannot read which loss types {config_fields(config).name} of {trl} "
                    f"accepts, so trainer.loss_type cannot be checked; remove it to use the default, or install a "
                    f"TRL version dpo-cli supports")
    for i, name in enumerate(given):
        if name not in known:
            entry = "" if len(given) == 1 else f" (entry {i + 1} of the list)"
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise error(("trainer", "loss_type"), f"loss type '{name}'{entry} is not one {trl} knows{hint}; it knows: "
                        f"{', '.join(known)}")
    return given


def reward_specs(recipe: Recipe, error: ErrorAt) -> list[RewardSpec]:
    """The reward: section's functions, parsed; a user function's file, module or name fails now, not mid-run."""
    if recipe.reward is None or not recipe.reward.functions:
        raise error(("reward",), f"stage {recipe.stage} needs reward functions: reward: {{functions: [...]}} with "
                    "built-ins (length, regex, contains_answer, reward_model) or module:function entries")
    if recipe.reward.weights is not None and "reward_weights" in recipe.trainer:
        raise error(("trainer", "reward_weights"), "set the weights once: reward.weights or trainer.reward_weights")
    specs = []
    for i, entry in enumerate(recipe.reward.functions):
        try:
            spec = parse_spec(entry)
            if not spec.builtin:
                load_user_function(spec.name)
        except SpecError as exc:
            raise error(("reward", "functions", i), str(exc)) from None
        specs.append(spec)
    return specs


def function_specs(recipe: Recipe, error: ErrorAt) -> list[RewardSpec]:
    """reward: as GRPO reads it: functions only (a reward model is listed as a function)."""
    specs = reward_specs(recipe, error)
    if recipe.reward.model or recipe.reward.value_model:
        raise error(("reward",), f"reward.model and reward.value_model are for ppo; in {recipe.stage} list the "
                    "reward model as a function: {reward_model: PATH}")
    return specs


def judge_specs(recipe: Recipe, error: ErrorAt) -> list[RewardSpec]:
    """The judge of a stage that picks chosen and rejected itself: a reward model (reward.model) or reward functions."""
    reward = recipe.reward
    if reward is None or not (reward.model or reward.functions):
        raise error(("reward",), f"stage {recipe.stage} needs a judge to pick chosen and rejected: reward: {{model: "
                    "PATH} (a reward stage's output, ${rm.output_dir} in a pipeline) or reward: {functions: [...]}")
    if reward.value_model:
        raise error(("reward", "value_model"), "reward.value_model is for ppo")
    if reward.model and reward.functions:
        raise error(("reward", "model"), "give reward.model or reward.functions, not both; to combine them, list the "
                                         "model as a function: {reward_model: PATH}")
    if reward.model:
        if reward.weights is not None:
            raise error(("reward", "weights"), "reward.weights weighs reward.functions; a lone reward.model needs none")
        return [RewardSpec("reward_model", {"path": reward.model})]
    return reward_specs(recipe, error)


def reward_functions(recipe: Recipe, specs: list[RewardSpec], columns: list[str]) -> tuple[list[Any], list[Any]]:
    """(functions, processing classes) as TRL's trainers take them; reward models load as sequence classifiers with
    the policy's dtype and trust_remote_code, and their own tokenizer."""

    def load_reward_model(path: str):
        section = recipe.model.model_copy(update={"name_or_path": path, "tokenizer": None, "chat_template": None})
        return load_sequence_classifier(section), load_tokenizer(section)

    try:
        return build_reward_functions(specs, columns, load_reward_model)
    except SpecError as exc:
        raise RecipeError(str(exc), field="reward.functions") from None


# what the stages that sample from prompts and score with the reward: section read (grpo, rloo, online-dpo)
PROMPT_DATA = ("prompts: a prompt column (text or messages), plus any columns the reward functions read, such as an "
               "answer")


def suppress_image_token(args, processor) -> None:
    """Never sample the image token: an answer holding one has no image behind it, and the forward that scores the
    answer fails ("Image features and image tokens do not match"). TRL 1.16's GRPO and RLOO suppress it themselves;
    its online DPO, and GRPO and RLOO in TRL 1.0, do not. Through the config's public generation_kwargs (the
    recipe's own keys win); not for vLLM, whose sampling parameters have no such key."""
    token = getattr(processor, "image_token_id", None)
    given = getattr(args, "generation_kwargs", None)
    if token is None or getattr(args, "use_vllm", False) or not (given is None or isinstance(given, dict)):
        return
    args.generation_kwargs = {"suppress_tokens": [token], **(given or {})}


def build_scored_trainer(trainer_class: type, inputs: StageInputs,
                         specs: Callable[[Recipe, ErrorAt], list[RewardSpec]]):
    """A TRL trainer that samples from prompts and scores with reward functions (GRPO, RLOO, online DPO share the
    call); ``specs`` reads which functions from the recipe."""
    recipe = inputs.recipe
    columns = inputs.train_dataset.column_names
    functions, processing = reward_functions(recipe, specs(recipe, raise_at_field), columns)
    if "image" in columns or "images" in columns:  # TRL's image columns: a reward model reads their prompts as text
        processing = [None if p is None else TextPrompts(p) for p in processing]
        suppress_image_token(inputs.args, inputs.tokenizer)
    return trainer_class(model=inputs.model, reward_funcs=functions, args=inputs.args,
                         train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
                         processing_class=inputs.tokenizer, reward_processing_classes=processing,
                         callbacks=inputs.callbacks, peft_config=inputs.peft_config)


def kl_reference(recipe: Recipe, config: str) -> ReferencePlan:
    """GRPO's and RLOO's reference: none without a KL penalty (beta 0), else the policy with its LoRA adapter
    disabled, or a frozen copy TRL makes. Their default beta differs (GRPO 0, RLOO 0.05 in TRL 1.0 to 1.16), so it
    is read from the installed config."""
    beta = setting(recipe, config, "beta")
    if not beta:
        return ReferencePlan("none", "none: beta is 0, so no KL penalty and no reference model")
    if recipe.lora is not None:
        return ReferencePlan("shared", f"shared: beta {beta} adds a KL penalty to the policy with its LoRA adapter "
                                       "disabled")
    return ReferencePlan("trainer-copy", f"frozen copy made by TRL: beta {beta} adds a KL penalty to the starting "
                                         "weights (trainer.beta=0 drops it)")


def trainer_weights(recipe: Recipe) -> dict[str, Any]:
    """The config's reward_weights from reward.weights (grpo, rloo, online-dpo)."""
    weights = recipe.reward.weights if recipe.reward is not None else None
    return {"reward_weights": weights} if weights is not None else {}


def reward_model_paths(recipe: Recipe) -> tuple[str, ...]:
    """The reward models the reward: section loads (reward.model and {reward_model: PATH} functions)."""
    reward = recipe.reward
    if reward is None:
        return ()
    paths = [reward.model] if reward.model else []
    for entry in reward.functions:
        try:
            spec = parse_spec(entry)
        except SpecError:
            continue  # refused at load already
        if spec.builtin and spec.name == "reward_model":
            paths.append(spec.options["path"])
    return tuple(paths)


def group_sampling(recipe: Recipe, config: str) -> SamplingPlan:
    """GRPO and RLOO generate one batch of completions (generation_batch_size, num_generations per prompt) at once."""
    batch = setting(recipe, config, "generation_batch_size")
    if batch is None:
        steps = setting(recipe, config, "steps_per_generation") or \
            setting(recipe, config, "gradient_accumulation_steps")
        batch = setting(recipe, config, "per_device_train_batch_size") * steps
    completion = setting(recipe, config, "max_completion_length") or 256
    return SamplingPlan(int(batch), ASSUMED_PROMPT_TOKENS + int(completion), reward_model_paths(recipe))


def check_beta(recipe: Recipe, error: ErrorAt, *, zero_means: str | None = None) -> None:
    """trainer.beta where the recipe sets it. TRL takes any number, but its losses scale the preference by beta: a
    negative beta trains toward the rejected answers (and reports them as preferred), 0 learns nothing. Where beta
    weights a term instead (GRPO's KL penalty, ORPO's odds ratio), 0 is allowed and ``zero_means`` says what it does.
    Online DPO takes a list (one beta per epoch): each is checked."""
    given = recipe.trainer.get("beta")
    for value in given if isinstance(given, list) else [given]:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if zero_means is None and value <= 0:
            raise error(("trainer", "beta"), f"must be positive (got {value!r}): beta scales the preference in the "
                        "loss, so below zero training moves toward the rejected answers and at zero it learns "
                        "nothing; the usual range is 0.01 to 0.5")
        if zero_means is not None and value < 0:
            raise error(("trainer", "beta"), f"must not be negative (got {value!r}): a negative beta turns its term "
                        f"around and trains away from what it should; 0 {zero_means}")
