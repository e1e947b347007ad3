"""KTO stage: TRL's KTOTrainer on unpaired rows (prompt, completion, label); pairs are unpaired on the fly."""

from __future__ import annotations

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import ReferencePlan, StageInputs, TrainingStage
from dpo_cli.train.stages.checks import check_beta, check_loss_types
from dpo_cli.train.trl_compat import kto_takes_images

CONFIG = "trl:KTOConfig"



def reference(recipe: Recipe) -> ReferencePlan:
    if recipe.lora is not None:
        return ReferencePlan("shared", "shared: the policy with its LoRA adapter disabled, no second copy in memory")
    if recipe.trainer.get("precompute_ref_log_probs"):
        return ReferencePlan("precomputed", "precomputed: reference log-probs computed once before training, no "
                                            "reference kept in memory")
    return ReferencePlan("copy", "frozen copy: a second, frozen copy of the policy's starting weights "
                                 "(full fine-tuning)")


def validate(recipe: Recipe, error: ErrorAt) -> None:
    check_loss_types(recipe, error, CONFIG)
    check_beta(recipe, error)


def no_images() -> str | None:
    """KTO takes unpaired image rows where this TRL's KTOTrainer has its vision collator."""
    if kto_takes_images():
        return None
    from importlib import metadata

    return (f"TRL {metadata.version('trl')}'s KTOTrainer has no image path (TRL 1.12 and 1.16 have one for unpaired "
            f"rows; 1.0 has none)")


def build_trainer(inputs: StageInputs):
    from trl import KTOTrainer

    return KTOTrainer(model=inputs.model, ref_model=inputs.ref_model, args=inputs.args,
                      train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
                      processing_class=inputs.tokenizer, callbacks=inputs.callbacks, peft_config=inputs.peft_config)


STAGE = TrainingStage(
    name="kto",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="kto",
    data_expects="unpaired rows (prompt, completion, label true/false) or preference pairs (split into two rows)",
    reference=reference,
    # TRL's KTO scores each row's completion and, for the KL estimate, a mismatched completion: two sequences
    sequences_per_row=lambda recipe: 2,
    validate=validate,
    no_images=no_images,
)
