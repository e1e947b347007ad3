"""Reward stage: TRL's RewardTrainer on preference pairs, training a one-output sequence classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "preference"
DATA_EXPECTS = "preference pairs (prompt, chosen, rejected)"
EVALUATION = "reward"  # held-out pairwise accuracy (reward of chosen above rejected) before and after


def config_class() -> type:
    from trl import RewardConfig

    return RewardConfig


PEFT_TASK = "SEQ_CLS"  # LoRA on a sequence classifier: peft then trains the score head too


def load_policy(section):
    from ..models import load_sequence_classifier

    return load_sequence_classifier(section)


def reference_strategy(recipe) -> str:
    return "none: a reward model is trained on pairs alone"


def build_trainer(inputs: StageInputs):
    from trl import RewardTrainer

    return RewardTrainer(model=inputs.model, args=inputs.args, train_dataset=inputs.train_dataset,
                         eval_dataset=inputs.eval_dataset, processing_class=inputs.tokenizer,
                         callbacks=inputs.callbacks, peft_config=inputs.peft_config)
