"""DPO stage: TRL's DPOTrainer on preference pairs, against the reference the recipe's strategy picks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpo_cli.core.builtins import cache_home
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.stages.base import ReferencePlan, Stage, StageInputs
from dpo_cli.train.stages.checks import check_loss_types


def config_class() -> type:
    from trl import DPOConfig

    return DPOConfig


def precompute_enabled(recipe: Recipe) -> bool:
    """Reference log-probs computed once before training, from ref_model.precompute or TRL's own key."""
    return bool(recipe.ref_model.precompute or recipe.trainer.get("precompute_ref_log_probs"))


def ref_cache_dir(recipe: Recipe) -> Path:
    return Path(recipe.ref_model.cache_dir) if recipe.ref_model.cache_dir else cache_home() / "ref-logps"


def reference(recipe: Recipe) -> ReferencePlan:
    ref = recipe.ref_model
    if ref.explicit:
        source = ref.name_or_path or f"{recipe.model.name_or_path} (the policy's starting weights)"
        source += f" + adapter {ref.adapter}" if ref.adapter else ""
        source += f", {ref.quantization.bits}-bit" if ref.quantization else ""
    elif recipe.lora is not None:
        source = "the policy with its LoRA adapter disabled"
    else:
        source = "the policy's starting weights"
    if precompute_enabled(recipe):
        where = (f"cached on disk in {ref_cache_dir(recipe)}, reused by a later run with the same reference, "
                 f"tokenizer, data and truncation") if ref.cache else "not cached (ref_model.cache: false)"
        return ReferencePlan("precomputed", f"precomputed: log-probs computed once before training by {source}, "
                                            f"then no reference in memory; {where}", explicit=ref.explicit)
    if ref.explicit:
        return ReferencePlan("separate", f"separate: {source}, frozen", explicit=True)
    if recipe.lora is not None:
        return ReferencePlan("shared", "shared: the policy with its LoRA adapter disabled, no second copy in memory")
    return ReferencePlan("copy", "frozen copy: a second, frozen copy of the policy's starting weights "
                                 "(full fine-tuning)")


# Loss names LLaMA-Factory's pref_loss takes that TRL's DPO does not (any more): what to use instead.
REPLACED_LOSSES = {
    "kto_pair": "TRL removed kto_pair from its DPO losses; for KTO use stage: kto with unpaired rows (dpo-cli "
                "convert-data --to kto, or give it pairs: it splits them), or loss_type: apo_zero for a paired "
                "alternative",
    "orpo": "ORPO is a stage of its own with no reference model: stage: orpo (trainer.beta is its lambda)",
    "simpo": "SimPO is a stage of its own with no reference model: stage: simpo (trainer.simpo_gamma, trainer.beta)",
}


def validate(recipe: Recipe, error: ErrorAt) -> None:
    given = recipe.trainer.get("loss_type")
    for name in [given] if isinstance(given, str) else given or []:
        if name in REPLACED_LOSSES:
            raise error(("trainer", "loss_type"), f"loss type '{name}': {REPLACED_LOSSES[name]}")
    check_loss_types(recipe, error, config_class())
    if recipe.ref_model.precompute and recipe.trainer.get("precompute_ref_log_probs") is False:
        raise error(("trainer", "precompute_ref_log_probs"), "contradicts ref_model.precompute: true; remove one of "
                                                             "them")
    if recipe.trainer.get("sync_ref_model"):
        if precompute_enabled(recipe):
            where = ("ref_model", "precompute") if recipe.ref_model.precompute \
                else ("trainer", "precompute_ref_log_probs")
            raise error(where, "precomputed reference log-probs assume a fixed reference, but trainer.sync_ref_model "
                               "updates it during training; use one or the other")
        if recipe.lora is not None and not recipe.ref_model.explicit:
            raise error(("trainer", "sync_ref_model"),
                        "with lora: the reference is the policy with its adapter disabled, so there is no separate "
                        "reference to synchronise; set ref_model.name_or_path for a separate one, or drop "
                        "sync_ref_model")


def trainer_fields(recipe: Recipe) -> dict[str, Any]:
    """DPOConfig fields that follow from our own sections rather than from trainer:."""
    return {"precompute_ref_log_probs": True} if recipe.ref_model.precompute else {}


def build_trainer(inputs: StageInputs):
    from trl import DPOTrainer

    trainer_class = DPOTrainer
    if inputs.ref_cache is not None:
        from dpo_cli.train.refcache import CachedPrecompute
        from dpo_cli.train.trl_compat import dpo_trainer_with_precompute_hook

        trainer_class = dpo_trainer_with_precompute_hook(DPOTrainer, CachedPrecompute(inputs.ref_cache))
    trainer = trainer_class(model=inputs.model, ref_model=inputs.ref_model, args=inputs.args,
                            train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
                            processing_class=inputs.tokenizer, callbacks=inputs.callbacks,
                            peft_config=inputs.peft_config)
    if inputs.args.precompute_ref_log_probs and trainer.ref_model is not None:
        # every log-prob the loss needs is in the datasets now: free the separate reference's weights
        trainer.ref_model = None
    return trainer


STAGE = Stage(
    name="dpo",
    config_class=config_class,
    build_trainer=build_trainer,
    data_kind="preference",
    data_expects="preference pairs (prompt, chosen, rejected)",
    reference=reference,
    sequences_per_row=lambda recipe: 2,  # chosen and rejected go through the model together
    evaluation="preference",
    uses_ref_model=True,
    validate=validate,
    trainer_fields=trainer_fields,
)
