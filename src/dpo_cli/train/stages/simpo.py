"""SimPO stage: CPOTrainer with loss_type simpo set for the user: length-normalised log-probs, a target margin, no
reference model."""

from __future__ import annotations

import dataclasses
from typing import Any

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages import cpo
from dpo_cli.train.stages.base import ReferencePlan
from dpo_cli.train.stages.checks import check_beta, missing_experimental


def trainer_fields(recipe: Recipe) -> dict[str, Any]:
    # SimPO as published has no SFT term; trainer.cpo_alpha > 0 adds CPO's (CPO-SimPO, LLaMA-Factory's pref_ftx)
    return {"loss_type": "simpo", "cpo_alpha": 0.0}


def validate(recipe: Recipe, error: ErrorAt) -> None:
    given = recipe.trainer.get("loss_type", "simpo")
    if given != "simpo":
        raise error(("trainer", "loss_type"), f"stage simpo sets loss_type: simpo itself; for CPO's {given} loss "
                                              "use stage: cpo")
    check_beta(recipe, error)


STAGE = dataclasses.replace(
    cpo.STAGE,
    name="simpo",
    reference=lambda recipe: ReferencePlan("none", "none: SimPO's reward is the policy's length-normalised "
                                                   "log-prob, with no reference model"),
    validate=validate,
    trainer_fields=trainer_fields,
    unavailable=lambda: missing_experimental("simpo", cpo.MODULE, "CPOTrainer"),
    no_images=lambda: ("SimPO runs on TRL's CPOTrainer (trl.experimental, checked in 1.0 and 1.16), "
                       "which tokenizes text only"),
)
