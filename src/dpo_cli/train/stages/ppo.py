"""PPO stage: TRL's PPOTrainer (trl.experimental.ppo, TRL 1.0 to 1.12): policy, reference, reward and value models."""

from __future__ import annotations

import importlib.util
from importlib import metadata

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.models import load_sequence_classifier
from dpo_cli.train.stages.base import ReferencePlan, StageInputs, TrainingStage

EXTRA = "pip install 'dpo-cli[ppo]'"


def unavailable() -> str | None:
    try:
        found = importlib.util.find_spec("trl.experimental.ppo") is not None
    except ImportError:
        found = False
    if found:
        return None
    return (f"stage ppo needs TRL's PPOTrainer, which TRL removed in 1.13 (this environment has trl "
            f"{metadata.version('trl')}); install the PPO extra, which pins trl<1.13, in a separate environment: "
            f"{EXTRA}")


CONFIG = "trl.experimental.ppo:PPOConfig"



def validate(recipe: Recipe, error: ErrorAt) -> None:
    for key, instead in (("reward_model_path", "reward.model"), ("sft_model_path", "model.name_or_path")):
        if key in recipe.trainer:
            raise error(("trainer", key), f"set the model with {instead}, not trainer.{key}")
    if recipe.reward is None or not recipe.reward.model:
        raise error(("reward",), "stage ppo needs a reward model: reward: {model: PATH} (for example the output_dir "
                    "of a reward stage, ${rm.output_dir} in a pipeline)")
    if recipe.reward.functions or recipe.reward.weights:
        raise error(("reward", "functions"), "ppo scores with reward.model only; reward functions are for grpo")


def reference(recipe: Recipe) -> ReferencePlan:
    value = "reward.value_model" if recipe.reward and recipe.reward.value_model else "the reward model"
    models = f"; reward model from reward.model; value model initialised from {value}"
    if recipe.lora is not None:
        return ReferencePlan("shared", "the policy with its LoRA adapter disabled" + models)
    return ReferencePlan("copy", "frozen copy of the policy's starting weights" + models)


def _tokenize(dataset, tokenizer):
    """PPO takes token ids of the prompts (with the generation prompt of the chat template), nothing else."""

    def encode(row):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            return {"input_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"]}
        return {"input_ids": tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"]}

    return dataset.map(encode, remove_columns=dataset.column_names)


def build_trainer(inputs: StageInputs):
    from trl.experimental.ppo import PPOTrainer

    reward = inputs.recipe.reward
    section = inputs.recipe.model.model_copy(update={"name_or_path": reward.model, "tokenizer": None,
                                                     "chat_template": None})
    reward_model = load_sequence_classifier(section)
    value_model = load_sequence_classifier(section.model_copy(update={"name_or_path": reward.value_model
                                                                      or reward.model}))
    tokenizer = inputs.tokenizer
    tokenizer.padding_side = "left"  # generation continues from the end of each prompt
    for model in (reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    eval_dataset = _tokenize(inputs.eval_dataset, tokenizer) if inputs.eval_dataset is not None else None
    return PPOTrainer(args=inputs.args, processing_class=tokenizer, model=inputs.model, ref_model=inputs.ref_model,
                      reward_model=reward_model, value_model=value_model,
                      train_dataset=_tokenize(inputs.train_dataset, tokenizer), eval_dataset=eval_dataset,
                      callbacks=inputs.callbacks, peft_config=inputs.peft_config)


STAGE = TrainingStage(
    name="ppo",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="prompt",
    data_expects="prompts: a prompt column (text or messages)",
    reference=reference,
    uses_reward=True,
    resumable=False,  # TRL's PPOTrainer has its own loop: no resume from checkpoints
    step_loop=False,  # nor training_step or should_training_stop: no watchdog, no stop at a step boundary
    validate=validate,
    unavailable=unavailable,
    no_images=lambda: "TRL's PPOTrainer (up to 1.12) trains a causal LM on text only",
)
