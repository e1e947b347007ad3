"""DPO stage: TRL's DPOTrainer on preference pairs, against a frozen reference model."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "preference"


def config_class() -> type:
    from trl import DPOConfig

    return DPOConfig


def reference_strategy(recipe) -> str:
    if recipe.trainer.get("precompute_ref_log_probs"):
        return "precomputed: reference log-probs computed once before training, no reference kept in memory"
    return "frozen copy: a second, frozen copy of the policy's starting weights (full fine-tuning)"


def build_trainer(inputs: StageInputs):
    from trl import DPOTrainer

    return DPOTrainer(
        model=inputs.model,
        ref_model=inputs.ref_model,
        args=inputs.args,
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
    )
