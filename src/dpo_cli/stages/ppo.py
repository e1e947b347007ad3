"""PPO stage: TRL's PPOTrainer (trl.experimental.ppo, TRL 1.0 to 1.12) with policy, reference, reward and value models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "prompt"
DATA_EXPECTS = "prompts: a prompt column (text or messages)"
USES_REWARD = True
EXTRA = "pip install 'dpo-cli[ppo]'"


def unavailable() -> str | None:
    import importlib.util
    import os
    from importlib import metadata

    # the stage uses trl.experimental on purpose; TRL's warning about that is noise to the user
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        found = importlib.util.find_spec("trl.experimental.ppo") is not None
    except ImportError:
        found = False
    if found:
        return None
    version = metadata.version("trl")
    return (f"stage ppo needs TRL's PPOTrainer, which TRL removed in 1.13 (this environment has trl {version}); "
            f"install the PPO extra, which pins trl<1.13, in a separate environment: {EXTRA}")


def config_class() -> type:
    from trl.experimental.ppo import PPOConfig

    return PPOConfig


def validate_recipe(recipe, error) -> None:
    for key, instead in (("reward_model_path", "reward.model"), ("sft_model_path", "model.name_or_path")):
        if key in recipe.trainer:
            raise error(("trainer", key), f"set the model with {instead}, not trainer.{key}")
    if recipe.reward is None or not recipe.reward.model:
        raise error(("reward",), "stage ppo needs a reward model: reward: {model: PATH} (for example the output_dir "
                    "of a reward stage, ${rm.output_dir} in a pipeline)")
    if recipe.reward.functions or recipe.reward.weights:
        raise error(("reward", "functions"), "ppo scores with reward.model only; reward functions are for grpo")


def needs_reference(recipe) -> bool:
    return True


def reference_strategy(recipe) -> str:
    policy = "the policy with its LoRA adapter disabled" if recipe.lora is not None \
        else "frozen copy of the policy's starting weights"
    return (f"{policy}; reward model from reward.model; value model initialised "
            "from " + ("reward.value_model" if recipe.reward and recipe.reward.value_model else "the reward model"))


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

    from ..models import load_sequence_classifier
    from ..recipe import ModelSection

    class Trainer(PPOTrainer):
        def train(self, resume_from_checkpoint=None):
            if resume_from_checkpoint:
                from ..errors import InputError

                raise InputError("TRL's PPOTrainer cannot resume from a checkpoint; start the ppo stage again")
            return super().train()

    reward = inputs.recipe.reward
    trust = inputs.recipe.model.trust_remote_code
    reward_model = load_sequence_classifier(ModelSection(name_or_path=reward.model, trust_remote_code=trust))
    value_model = load_sequence_classifier(ModelSection(name_or_path=reward.value_model or reward.model,
                                                        trust_remote_code=trust))
    tokenizer = inputs.tokenizer
    tokenizer.padding_side = "left"  # generation continues from the end of each prompt
    for model in (reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    eval_dataset = _tokenize(inputs.eval_dataset, tokenizer) if inputs.eval_dataset is not None else None
    return Trainer(args=inputs.args, processing_class=tokenizer, model=inputs.model, ref_model=inputs.ref_model,
                   reward_model=reward_model, value_model=value_model,
                   train_dataset=_tokenize(inputs.train_dataset, tokenizer), eval_dataset=eval_dataset,
                   callbacks=inputs.callbacks, peft_config=inputs.peft_config)
