"""KTO stage: TRL's KTOTrainer on unpaired rows (prompt, completion, label); preference pairs are unpaired on the fly."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "kto"
DATA_EXPECTS = "unpaired rows (prompt, completion, label true/false) or preference pairs (split into two rows)"


def config_class() -> type:
    from trl import KTOConfig

    return KTOConfig


def needs_reference(recipe) -> bool:
    return not recipe.trainer.get("precompute_ref_log_probs")


def reference_strategy(recipe) -> str:
    if recipe.lora is not None:
        return "shared: the policy with its LoRA adapter disabled, no second copy in memory"
    if recipe.trainer.get("precompute_ref_log_probs"):
        return "precomputed: reference log-probs computed once before training, no reference kept in memory"
    return "frozen copy: a second, frozen copy of the policy's starting weights (full fine-tuning)"


def build_trainer(inputs: StageInputs):
    from trl import KTOTrainer

    return KTOTrainer(model=inputs.model, ref_model=inputs.ref_model, args=inputs.args,
                      train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
                      processing_class=inputs.tokenizer, callbacks=inputs.callbacks, peft_config=inputs.peft_config)
