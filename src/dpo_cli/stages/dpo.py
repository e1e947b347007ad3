"""DPO stage: TRL's DPOTrainer on preference pairs, against the reference the recipe's strategy picks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "preference"


def config_class() -> type:
    from trl import DPOConfig

    return DPOConfig


def trainer_fields(recipe) -> dict[str, Any]:
    """DPOConfig fields that follow from our own sections rather than from trainer:."""
    return {"precompute_ref_log_probs": True} if recipe.ref_model.precompute else {}


def reference_strategy(recipe) -> str:
    from ..models import reference_plan

    return reference_plan(recipe).description


def build_trainer(inputs: StageInputs):
    from ..refcache import cached_dpo_trainer_class

    trainer_class = cached_dpo_trainer_class()
    trainer = trainer_class(
        model=inputs.model,
        ref_model=inputs.ref_model,
        args=inputs.args,
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
        peft_config=inputs.peft_config,
        ref_logp_cache=inputs.ref_cache,
    )
    if inputs.args.precompute_ref_log_probs and trainer.ref_model is not None:
        # every log-prob the loss needs is in the datasets now: free the separate reference's weights
        trainer.ref_model = None
    return trainer
