"""SFT stage: TRL's SFTTrainer on conversations, prompt/completion rows, or the chosen side of preference pairs."""

from __future__ import annotations

from dpo_cli.train.stages.base import StageInputs, TrainingStage

CONFIG = "trl:SFTConfig"



def build_trainer(inputs: StageInputs):
    from trl import SFTTrainer

    return SFTTrainer(model=inputs.model, args=inputs.args, train_dataset=inputs.train_dataset,
                      eval_dataset=inputs.eval_dataset, processing_class=inputs.tokenizer,
                      callbacks=inputs.callbacks, peft_config=inputs.peft_config)


STAGE = TrainingStage(
    name="sft",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="sft",
    data_expects=("supervised rows: conversations (messages), prompt/completion, or preference pairs (their chosen "
                  "side is learned)"),
    no_images=lambda: None,  # TRL's trainer takes the processor and an images column
)
