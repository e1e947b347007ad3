"""Reward stage: TRL's RewardTrainer on preference pairs, training a one-output sequence classifier."""

from __future__ import annotations

from dpo_cli.train.stages.base import StageInputs, TrainingStage

CONFIG = "trl:RewardConfig"



def build_trainer(inputs: StageInputs):
    from trl import RewardTrainer

    return RewardTrainer(model=inputs.model, args=inputs.args, train_dataset=inputs.train_dataset,
                         eval_dataset=inputs.eval_dataset, processing_class=inputs.tokenizer,
                         callbacks=inputs.callbacks, peft_config=inputs.peft_config)


STAGE = TrainingStage(
    name="reward",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="preference",
    data_expects="preference pairs (prompt, chosen, rejected)",
    sequences_per_row=lambda recipe: 2,  # chosen and rejected are scored in one batch
    evaluation="reward",  # held-out pairwise accuracy (reward of chosen above rejected) before and after
    policy="sequence-classifier",  # with LoRA, peft then trains the score head too
    no_images=lambda: ("TRL's RewardTrainer trains a sequence classifier over text (no processor, "
                       "checked in 1.0 and 1.16)"),
)
