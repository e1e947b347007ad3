"""SFT stage: TRL's SFTTrainer on conversations, prompt/completion rows, or the chosen side of preference pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "sft"
DATA_EXPECTS = ("supervised rows: conversations (messages), prompt/completion, or preference pairs (their chosen "
                "side is learned)")


def config_class() -> type:
    from trl import SFTConfig

    return SFTConfig


def reference_strategy(recipe) -> str:
    return "none: supervised fine-tuning has no reference model"


def build_trainer(inputs: StageInputs):
    from trl import SFTTrainer

    return SFTTrainer(model=inputs.model, args=inputs.args, train_dataset=inputs.train_dataset,
                      eval_dataset=inputs.eval_dataset, processing_class=inputs.tokenizer,
                      callbacks=inputs.callbacks, peft_config=inputs.peft_config)
