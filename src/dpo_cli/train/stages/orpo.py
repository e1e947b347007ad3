"""ORPO stage: trl.experimental.orpo's ORPOTrainer on preference pairs; an odds-ratio term, no reference model."""

from __future__ import annotations

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import ReferencePlan, StageInputs, TrainingStage
from dpo_cli.train.stages.checks import check_beta, missing_experimental

MODULE = "trl.experimental.orpo"


CONFIG = "trl.experimental.orpo:ORPOConfig"



def validate(recipe: Recipe, error: ErrorAt) -> None:
    check_beta(recipe, error, zero_means="drops the odds-ratio term, leaving plain SFT on the chosen answers")


def build_trainer(inputs: StageInputs):
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer(model=inputs.model, args=inputs.args, train_dataset=inputs.train_dataset,
                       eval_dataset=inputs.eval_dataset, processing_class=inputs.tokenizer, callbacks=inputs.callbacks,
                       peft_config=inputs.peft_config)


STAGE = TrainingStage(
    name="orpo",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="preference",
    data_expects="preference pairs (prompt, chosen, rejected)",
    reference=lambda recipe: ReferencePlan("none", "none: ORPO adds an odds-ratio term to the SFT loss of the "
                                                   "chosen response, with no reference model"),
    sequences_per_row=lambda recipe: 2,  # chosen and rejected go through the model together
    evaluation="preference",  # reference-free: log-prob figures before and after
    validate=validate,
    unavailable=lambda: missing_experimental("orpo", MODULE, "ORPOTrainer"),
    no_images=lambda: "TRL's ORPOTrainer (trl.experimental, checked in 1.0 and 1.16) tokenizes text only",
)
