"""DPO stage: TRL's DPOTrainer on preference pairs, against the reference the recipe's strategy picks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from dpo_cli.core.builtins import cache_home, resolve_builtin
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.models import is_vision_language
from dpo_cli.train.refcache import ReferencePrecompute, RefLogpCache, cache_key
from dpo_cli.train.stages.base import Default, PlannedRun, ReferencePlan, StageInputs, TrainingStage
from dpo_cli.train.stages.checks import check_beta, check_loss_types
from dpo_cli.train.trl_compat import dpo_liger_is_fused_loss, dpo_trainer_with_precompute_hook, free_reference

CONFIG = "trl:DPOConfig"



def precompute_enabled(recipe: Recipe) -> bool:
    """Reference log-probs computed once before training, from ref_model.precompute or TRL's own key (``auto``
    counts as off until the run settles it)."""
    return recipe.ref_model.precompute is True or bool(recipe.trainer.get("precompute_ref_log_probs"))


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
    given = check_loss_types(recipe, error, CONFIG)
    if not given or set(given) != {"sft"}:  # the SFT loss alone has no beta
        check_beta(recipe, error)
    if recipe.ref_model.precompute is True and recipe.trainer.get("precompute_ref_log_probs") is False:
        raise error(("trainer", "precompute_ref_log_probs"), "contradicts ref_model.precompute: true; remove one of "
                                                             "them")
    if recipe.trainer.get("sync_ref_model"):
        if precompute_enabled(recipe):
            where = ("ref_model", "precompute") if recipe.ref_model.precompute is True \
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
    return {"precompute_ref_log_probs": True} if recipe.ref_model.precompute is True else {}


def cache_hint(recipe: Recipe, train_data: dict, precision: str) -> str:
    """A key for "the cache holds this run's reference log-probs", from what is known before any weight is loaded.

    The real cache key (refcache.py) hashes the weights and TRL's token ids, which exist only once the trainer is
    built; this one names the same things by their sources (model files by size and time, data by its canonical
    fingerprint). A wrong hint costs one precompute pass, never a wrong number: the real key is still checked.
    """
    ref = recipe.ref_model
    source = resolve_builtin(ref.name_or_path or recipe.model.name_or_path)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(source).iterdir() if p.is_file()) \
        if Path(source).is_dir() else []
    trainer = recipe.trainer
    quantization = ref.quantization or (None if ref.explicit else recipe.quantization)
    return cache_key({
        "reference": [source, files, ref.adapter, recipe.model.dtype,
                      quantization.model_dump() if quantization else None],
        "tokenizer": [recipe.model.tokenizer or recipe.model.name_or_path, recipe.model.chat_template],
        "data": [train_data.get("fingerprint"), recipe.data.eval_split, recipe.seed],
        "settings": [trainer.get(k) for k in ("max_length", "truncation_mode", "pad_to_multiple_of", "ld_alpha",
                                              "disable_dropout")] + [precision],
    })


def ref_logp_cache(recipe: Recipe, data_info: dict, precision: str) -> RefLogpCache | None:
    """The on-disk cache a run reads and fills, when its reference is precomputed with ref_model.cache on."""
    if not (reference(recipe).kind == "precomputed" and recipe.ref_model.cache):
        return None
    return RefLogpCache(ref_cache_dir(recipe), hint=cache_hint(recipe, data_info["train"], precision))


def _rows_seen(recipe: Recipe, run: PlannedRun) -> tuple[float | None, str]:
    """How many times the planned run sees each training row (None when that needs data this machine lacks)."""
    trainer = recipe.trainer
    steps = int(trainer.get("max_steps") or -1)
    if steps <= 0:
        epochs = float(trainer.get("num_train_epochs", 3.0))
        return epochs, f"{epochs:g} epoch(s)"
    info = run.train_data()
    if not info or not info.get("rows"):
        return None, "its training rows could not be counted here"
    per_step = (int(trainer.get("per_device_train_batch_size", 8)) * int(trainer.get("gradient_accumulation_steps", 1))
                * run.processes)
    return steps * per_step / info["rows"], f"{steps} steps x {per_step} rows over {info['rows']} training rows"


def _precompute_default(recipe: Recipe, run: PlannedRun) -> Default:
    key = "ref_model.precompute"
    if recipe.ref_model.precompute != "auto":
        return Default(key, recipe.ref_model.precompute, "set by the recipe", explicit=True)
    if recipe.trainer.get("precompute_ref_log_probs") is not None:
        return Default(key, bool(recipe.trainer["precompute_ref_log_probs"]),
                       "set by the recipe (trainer.precompute_ref_log_probs)", explicit=True)
    if recipe.trainer.get("sync_ref_model"):
        return Default(key, False, "trainer.sync_ref_model updates the reference while training, so TRL cannot "
                                   "precompute it: the reference runs at every step")
    if is_vision_language(recipe.model):
        return Default(key, False, "TRL does not precompute reference log-probs for a vision-language model's image "
                                   "rows (it processes images on the fly): the reference runs at every step")
    # log-probs already on disk cost nothing to use, on any device (1.43x a whole CPU run, benchmarks/memory.py)
    info = run.train_data() if recipe.ref_model.cache else None
    if info and RefLogpCache(ref_cache_dir(recipe)).holds(cache_hint(recipe, info, run.device.precision)):
        return Default(key, True, f"the cache in {ref_cache_dir(recipe)} already holds these log-probs")
    if run.device.device != "cuda":
        return Default(key, False, "auto computes the log-probs ahead on a GPU only: on the CPU a first run measured "
                                   "no faster (the extra pass and hashing the weights for the cache cost what the "
                                   "steps save)")
    passes, how = _rows_seen(recipe, run)
    if passes is not None and passes >= 1:
        return Default(key, True, f"the run sees every training row ({how}): the reference scores each pair once "
                                  f"before training instead of at every step")
    if passes is None:
        return Default(key, False, f"{how}, so dpo-cli cannot tell whether a precompute pass pays: the reference "
                                   f"runs at every step (ref_model.precompute: true to precompute anyway)")
    return Default(key, False, f"the run sees {passes:.0%} of the training rows ({how}): scoring them all first "
                               f"would cost more than it saves (ref_model.precompute: true to precompute anyway)")


def _liger_default(recipe: Recipe, run: PlannedRun) -> Default:
    key = "trainer.use_liger_kernel"
    if "use_liger_kernel" in recipe.trainer:
        return Default(key, recipe.trainer["use_liger_kernel"], "set by the recipe", explicit=True)
    if run.device.device != "cuda":
        return Default(key, False, "Liger's kernels are Triton kernels for CUDA GPUs")
    if importlib.util.find_spec("liger_kernel") is None:
        return Default(key, False, "liger-kernel is not installed here (pip install 'dpo-cli[fast]')")
    if dpo_liger_is_fused_loss():
        return Default(key, False, "this TRL's DPO uses Liger as a fused loss that cannot precompute the reference "
                                   "nor mix loss types; set trainer.use_liger_kernel: true to use it anyway")
    return Default(key, True, "liger-kernel is installed and the model trains on CUDA: its RMSNorm, RoPE and SwiGLU "
                              "kernels (TRL keeps its own fused LM head)")


def settle(recipe: Recipe, run: PlannedRun) -> list[Default]:
    """DPO's run-dependent defaults: a precomputed reference (cached log-probs anywhere; on a GPU, a run that sees
    every row), Liger on CUDA."""
    return [_precompute_default(recipe, run), _liger_default(recipe, run)]


def build_trainer(inputs: StageInputs):
    from trl import DPOTrainer

    trainer_class = DPOTrainer
    if inputs.args.precompute_ref_log_probs:
        # our pass, not TRL's: TRL hands its log-probs to the other ranks through a file they cannot see (refcache.py)
        hook = ReferencePrecompute(inputs.ref_cache, separate=inputs.ref_model is not None)
        trainer_class = dpo_trainer_with_precompute_hook(DPOTrainer, hook)
    trainer = trainer_class(model=inputs.model, ref_model=inputs.ref_model, args=inputs.args,
                            train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
                            processing_class=inputs.tokenizer, callbacks=inputs.callbacks,
                            peft_config=inputs.peft_config)
    if inputs.args.precompute_ref_log_probs and trainer.ref_model is not None:
        free_reference(trainer)  # every log-prob the loss needs is in the datasets now
    return trainer


STAGE = TrainingStage(
    name="dpo",
    config=CONFIG,
    build_trainer=build_trainer,
    data_kind="preference",
    data_expects="preference pairs (prompt, chosen, rejected)",
    reference=reference,
    sequences_per_row=lambda recipe: 2,  # chosen and rejected go through the model together
    evaluation="preference",
    uses_ref_model=True,
    validate=validate,
    trainer_fields=trainer_fields,
    settle=settle,
    reference_cache=ref_logp_cache,
    no_images=lambda: None,  # TRL's trainer takes the processor and an images column
)
