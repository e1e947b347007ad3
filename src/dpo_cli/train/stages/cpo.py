"""CPO stage: trl.experimental.cpo's CPOTrainer on preference pairs (sigmoid, hinge, ipo, simpo), no reference."""

from __future__ import annotations

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import ReferencePlan, StageInputs, TrainingStage
from dpo_cli.train.stages.checks import check_beta, check_loss_types, missing_experimental

MODULE = "trl.experimental.cpo"


CONFIG = "trl.experimental.cpo:CPOConfig"



def validate(recipe: Recipe, error: ErrorAt) -> None:
    check_loss_types(recipe, error, CONFIG)
    check_beta(recipe, error)


def build_trainer(inputs: StageInputs):
    from trl.experimental.cpo import CPOTrainer

    return CPOTrainer(model=inputs.model, args=inputs.args, train_dataset=inputs.train_dataset,
                      eval_dataset=inputs.eval_dataset, processing_class=inputs.tokenizer, callbacks=inputs.callbacks,
                      peft_config=inputs.peft_config)


def unavailable() -> str | None:
    return missing_experimental("cpo", MODULE, "CPOTrainer")


STAGE = TrainingStage(
    name="cpo",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="preference",
    data_expects="preference pairs (prompt, chosen, rejected)",
    reference=lambda recipe: ReferencePlan("none", "none: CPO compares chosen and rejected under the policy alone"),
    sequences_per_row=lambda recipe: 2,  # chosen and rejected go through the model together
    evaluation="preference",  # reference-free: log-prob figures before and after
    validate=validate,
    unavailable=unavailable,
    no_images=lambda: "TRL's CPOTrainer (trl.experimental, checked in 1.0 and 1.16) tokenizes text only",
)
