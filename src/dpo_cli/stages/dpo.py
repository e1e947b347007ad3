"""DPO stage: TRL's DPOTrainer on preference pairs, against the reference the recipe's strategy picks."""

from __future__ import annotations

import difflib
import inspect
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..run import StageInputs

DATA_KIND = "preference"
DATA_EXPECTS = "preference pairs (prompt, chosen, rejected)"
EVALUATION = "preference"  # held-out implicit-reward accuracy before and after training


def config_class() -> type:
    from trl import DPOConfig

    return DPOConfig


def known_loss_types(trainer_class: type) -> list[str]:
    """The loss types a TRL trainer dispatches on, read from its installed source so the list never drifts."""
    source = inspect.getsource(inspect.getmodule(trainer_class))
    names = set(re.findall(r"""loss_type\s*==\s*["']([A-Za-z0-9_]+)["']""", source))
    for group in re.findall(r"""loss_type\s+in\s*[\[{(]([^\]})]*)[\]})]""", source):  # loss_type in ["a", "b"]
        names.update(re.findall(r"""["']([A-Za-z0-9_]+)["']""", group))
    return sorted(names)


def check_loss_types(recipe, error, trainer_class: type) -> list[str]:
    """Each trainer.loss_type must be one the installed TRL handles; returns the list given."""
    given = recipe.trainer.get("loss_type")
    if given is None:
        return []
    given = [given] if isinstance(given, str) else list(given)
    known = known_loss_types(trainer_class)
    for i, name in enumerate(given):
        if known and name not in known:
            import trl

            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            entry = "" if len(given) == 1 else f" (entry {i + 1} of the list)"
            raise error(("trainer", "loss_type"), f"loss type '{name}'{entry} is not one TRL {trl.__version__} "
                        f"knows{hint}; it knows: {', '.join(known)}")
    return given


def validate_recipe(recipe, error) -> None:
    from trl import DPOTrainer

    given = check_loss_types(recipe, error, DPOTrainer)
    weights = recipe.trainer.get("loss_weights")
    if weights is not None and len(weights) != max(1, len(given) or 1):
        raise error(("trainer", "loss_weights"), f"{len(weights)} loss_weights for {max(1, len(given))} loss_type "
                    f"entries ({', '.join(given) or 'sigmoid'}); give one weight per loss type")


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
