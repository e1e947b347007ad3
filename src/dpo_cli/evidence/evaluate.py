"""`dpo-cli eval`: a run (or any model) on held-out pairs, against the reference the run trained against."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dpo_cli.core.errors import InputError
from dpo_cli.core.rundir import RunDir
from dpo_cli.data.load import load_splits, load_training_data
from dpo_cli.evidence.metrics import clean, preference_metrics, reward_model_metrics
from dpo_cli.recipe.schema import ModelSection, Recipe
from dpo_cli.train.models import (
    is_vision_language,
    load_causal_lm,
    load_processing_class,
    load_reference,
    load_sequence_classifier,
    load_tokenizer,
    loading,
    quiet_libraries,
    resolve_model_path,
)
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.scoring import Truncation, image_rows, kl_on_chosen, score_pairs, score_reward_pairs
from dpo_cli.train.stages import get_stage


@dataclass
class EvalTarget:
    """What ``dpo-cli eval`` scores: a model, its reference and beta, on which data."""

    model: str
    reference: str | None  # how the reference is described; None: no reference
    reference_path: str | None  # a model given with --ref; None: the run's own reference
    beta: float
    data: list[str] | None  # None: the run's own held-out split
    truncation: Truncation
    recipe: Recipe | None = None  # the run's recipe when given a run directory


def _dpo_default(field_name: str):
    from trl import DPOConfig

    return next(f.default for f in dataclasses.fields(DPOConfig) if f.name == field_name)


def run_reference(recipe: Recipe, run: RunDir) -> str:
    """The reference a run trained against, as eval describes it."""
    plan = get_stage(recipe.stage).reference(recipe)
    if plan.explicit:
        ref = recipe.ref_model
        return (ref.name_or_path or recipe.model.name_or_path) + (f" + adapter {ref.adapter}" if ref.adapter else "") \
            + (f", {ref.quantization.bits}-bit" if ref.quantization else "")
    if run.has_adapter():
        return f"{recipe.model.name_or_path} (the run's adapter disabled)"
    return recipe.model.name_or_path


def resolve_target(model_or_run: str, *, data: str | None = None, ref: str | None = None, beta: float | None = None,
                   max_length: int | None = None) -> EvalTarget:
    """A run directory brings its reference, beta, truncation and held-out data; options given win."""
    if beta is not None and not math.isfinite(beta):
        raise InputError(f"--beta must be a finite number (got {beta})")
    if beta is not None and beta <= 0:
        raise InputError(f"--beta must be positive (got {beta}): the implicit reward is beta * log-ratio")
    run = RunDir(model_or_run)
    if run.is_run():
        if not run.has_weights():
            raise InputError(f"run directory {run} holds no saved model (run status: "
                             f"{(run.manifest_or_none() or {}).get('status')})")
        recipe = load_recipe(run.recipe_file)
        trainer = recipe.trainer
        return EvalTarget(
            model=str(run), reference=ref or run_reference(recipe, run), reference_path=ref,
            beta=beta if beta is not None else trainer.get("beta", _dpo_default("beta")),
            data=[data] if data else None,
            truncation=Truncation(max_length or trainer.get("max_length", _dpo_default("max_length")),
                                  trainer.get("truncation_mode", _dpo_default("truncation_mode"))),
            recipe=recipe)
    if not data:
        raise InputError(f"{model_or_run} is not a run directory (no {RunDir.MANIFEST}): pass the pairs to score with "
                         f"--data FILE")
    return EvalTarget(model=model_or_run, reference=ref, reference_path=ref,
                      beta=beta if beta is not None else _dpo_default("beta"), data=[data],
                      truncation=Truncation(max_length or _dpo_default("max_length")))


def _eval_rows(target: EvalTarget):
    recipe = target.recipe
    if target.data:
        rows, _ = load_training_data(target.data, "preference")
        return rows, target.data
    # the run's own split: the same files, or the same eval_split drawn again with the run's seed
    _, rows, info = load_splits(recipe.data, recipe.seed, get_stage(recipe.stage).data_kind)
    if rows is None:
        raise InputError(f"run {target.model} has no held-out data (no data.eval nor data.eval_split in its recipe): "
                         f"pass --data FILE")
    return rows, info["eval"].get("files") or [f"{info['eval']['split_of_train']:.0%} split of the training data"]


def is_reward_model(path: str) -> bool:
    from transformers import AutoConfig

    if RunDir(path).has_adapter():
        return False
    with loading(path):
        config = AutoConfig.from_pretrained(resolve_model_path(path))
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_for_eval(path: str):
    """A causal LM from a model directory, a hub name or a built-in; a LoRA adapter directory onto its base."""
    if RunDir(path).has_adapter():
        from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel

        with loading(path):
            base = ModelSection(name_or_path=PeftConfig.from_pretrained(path).base_model_name_or_path)
        if is_vision_language(base):
            # peft's auto class loads the base as a causal LM, which a vision-language model is not: its base loads
            # with its vision tower here (load_causal_lm picks the class), then the adapter goes on
            model = load_causal_lm(base)
            with loading(path):
                return PeftModel.from_pretrained(model, path)
        with loading(path):
            return AutoPeftModelForCausalLM.from_pretrained(path)
    return load_causal_lm(ModelSection(name_or_path=path))


def to_device(model):
    import torch

    return model.to("cuda") if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False) \
        else model


def _reference_model(target: EvalTarget, policy):
    """(reference model, whether it is the policy with its adapters disabled), as the run trained against it."""
    recipe = target.recipe
    if target.reference_path:  # --ref, or a model outside a run
        return to_device(load_for_eval(target.reference_path)), False
    plan = get_stage(recipe.stage).reference(recipe)
    if plan.explicit:
        return load_reference(recipe), False
    if RunDir(target.model).has_adapter():
        return policy, True  # LoRA: the starting weights are the policy with its adapter disabled
    return to_device(load_causal_lm(recipe.model)), False


def _processing_class(target: EvalTarget):
    """The processor of a vision-language model to score pairs with images; a LoRA run's adapter directory holds the
    processor, its base model's config says the model reads images."""
    section = ModelSection(name_or_path=target.model)
    run = RunDir(target.model)
    if run.has_adapter() and target.recipe is not None:
        section = ModelSection(name_or_path=target.recipe.model.name_or_path, tokenizer=target.model)
    if not is_vision_language(section):
        raise InputError(f"the pairs hold images, but {target.model} is a text-only model (its config has no "
                         f"vision_config); score it on pairs without images")
    return load_processing_class(section)


def run_eval(target: EvalTarget, *, batch_size: int = 16) -> dict[str, Any]:
    """Score the target on its pairs; a reward model gets pairwise accuracy, a policy the preference metrics."""
    quiet_libraries()
    rows, files = _eval_rows(target)
    # pairs with images are scored with the model's processor, as its trainer batched them
    tokenizer = _processing_class(target) if image_rows(rows) else \
        load_tokenizer(ModelSection(name_or_path=target.model))
    result: dict[str, Any] = {"model": target.model, "data": {"files": files, "pairs": len(rows)},
                              "max_length": target.truncation.max_length}
    if is_reward_model(target.model):
        model = to_device(load_sequence_classifier(ModelSection(name_or_path=target.model)))
        scores = score_reward_pairs(model, tokenizer, rows, truncation=target.truncation, batch_size=batch_size)
        result.update(kind="reward_model", metrics=reward_model_metrics(scores))
        return result
    policy = to_device(load_for_eval(target.model))
    policy_scores = score_pairs(policy, tokenizer, rows, truncation=target.truncation, batch_size=batch_size)
    result.update(kind="policy", reference=target.reference, beta=target.beta)
    if target.reference is None:
        result["metrics"] = preference_metrics(policy_scores, None, target.beta)
        return result
    reference, shared = _reference_model(target, policy)
    ref_scores = score_pairs(reference, tokenizer, rows, truncation=target.truncation, batch_size=batch_size,
                             adapters_disabled=shared)
    metrics = preference_metrics(policy_scores, ref_scores, target.beta)
    metrics.update(clean(kl_on_chosen(policy, reference, tokenizer, rows, truncation=target.truncation,
                                      batch_size=max(1, batch_size // 4), reference_adapters_disabled=shared)))
    result["metrics"] = metrics
    return result

