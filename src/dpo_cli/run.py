"""One training run, top to bottom: config, data, tokenizer and models, trainer, train, evaluate, save."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import InputError, RecipeError
from .models import DevicePlan, plan_device
from .recipe import Recipe
from .stages import get_stage

RUN_FILE = "run.json"
RESOLVED_RECIPE = "recipe.resolved.yaml"
METRICS_FILE = "metrics.jsonl"
PACKAGES = ("dpo-cli", "trl", "transformers", "peft", "accelerate", "datasets", "torch")


@dataclass
class StageInputs:
    """Everything a stage module needs to build its TRL trainer."""

    args: Any
    model: Any
    ref_model: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    callbacks: list = field(default_factory=list)
    peft_config: Any = None  # a peft LoraConfig for the trainer to apply (lora: section)
    ref_cache: Any = None  # a refcache.RefLogpCache when reference log-probs are precomputed and cached


@dataclass
class RunResult:
    output_dir: Path
    manifest: dict


def trainer_kwargs(recipe: Recipe, plan: DevicePlan) -> dict[str, Any]:
    """The keyword arguments of the stage's TRL config: device fields, then the recipe's trainer: section."""
    stage = get_stage(recipe.stage)
    derived = stage.trainer_fields(recipe) if hasattr(stage, "trainer_fields") else {}
    return {"report_to": "none", **plan.trainer_fields(), **derived, **recipe.trainer,
            "output_dir": recipe.output_dir, "seed": recipe.seed}


def build_config(recipe: Recipe, plan: DevicePlan):
    config_class = get_stage(recipe.stage).config_class()
    try:
        return config_class(**trainer_kwargs(recipe, plan))
    except (ValueError, TypeError) as exc:
        # TRL's own cross-field checks (e.g. loss_weights vs loss_type): the recipe is at fault
        raise RecipeError(f"{config_class.__name__} rejected the trainer: section: {exc}") from None


def describe(recipe: Recipe) -> dict[str, Any]:
    """What --dry-run prints: device decision, the TRL config fields we set, the reference strategy."""
    plan = plan_device(recipe.trainer)
    config = build_config(recipe, plan)
    from .errors import ModelLoadError
    from .memory import estimate_memory

    try:
        memory = estimate_memory(recipe, plan, config)
    except ModelLoadError as exc:  # a hub model this machine cannot reach: the rest of the plan still stands
        memory = f"unavailable: {exc}"
    return {
        "config_class": type(config).__name__,
        "config_fields": {k: getattr(config, k) for k in trainer_kwargs(recipe, plan)},
        "device": plan,
        "reference": get_stage(recipe.stage).reference_strategy(recipe),
        "memory": memory,
    }


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare_output_dir(recipe: Recipe, overwrite: bool) -> Path:
    out = Path(recipe.output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output directory {out} is not empty; pass --overwrite to write over it, "
                         f"or choose another with output_dir=DIR")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_data(recipe: Recipe, kind: str):
    """Train and eval datasets plus what run.json records about them."""
    from .data import load_training_data

    train, train_fp = load_training_data(recipe.data.train, kind)
    info = {"train": {"files": recipe.data.train, "rows": len(train), "fingerprint": train_fp}}
    evaluation = None
    if recipe.data.eval:
        evaluation, eval_fp = load_training_data(recipe.data.eval, kind)
        info["eval"] = {"files": recipe.data.eval, "rows": len(evaluation), "fingerprint": eval_fp}
    elif recipe.data.eval_split:
        parts = train.train_test_split(test_size=recipe.data.eval_split, seed=recipe.seed)
        train, evaluation = parts["train"], parts["test"]
        info["eval"] = {"split_of_train": recipe.data.eval_split, "rows": len(evaluation)}
        info["train"]["rows"] = len(train)
    return train, evaluation, info


def _quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def train(recipe: Recipe, *, overwrite: bool = False) -> RunResult:
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    from .callbacks import MetricsFileCallback, ProgressCallback
    from .evaluate import preference_metrics, score_pairs
    from .models import load_models, load_tokenizer

    _quiet_libraries()
    stage = get_stage(recipe.stage)

    # 1. config: device and precision from the hardware, the rest from the recipe
    plan = plan_device(recipe.trainer)
    args = build_config(recipe, plan)
    out = prepare_output_dir(recipe, overwrite)
    manifest = {"dpo_cli_version": _versions()["dpo-cli"], "versions": _versions(), "git_commit": _git_commit(),
                "stage": recipe.stage, "started_at": _now(), "finished_at": None, "status": "running",
                "device": {"device": plan.device, "gpus": plan.gpus, "precision": plan.precision,
                           "reason": plan.reason, "host": platform.node()}}
    atomic_write_text(out / RESOLVED_RECIPE, recipe.to_yaml())

    # 2. data, checked before any weights are loaded
    train_dataset, eval_dataset, manifest["data"] = load_data(recipe, stage.DATA_KIND)
    atomic_write_text(out / RUN_FILE, json.dumps(manifest, indent=2))

    # 3. tokenizer and models
    tokenizer = load_tokenizer(recipe.model)
    models = load_models(recipe, plan)

    # 4. trainer
    callbacks = [MetricsFileCallback(out / METRICS_FILE), ProgressCallback()]
    trainer = stage.build_trainer(StageInputs(args, models.policy, models.reference, tokenizer, train_dataset,
                                              eval_dataset, callbacks, models.peft_config, models.ref_cache))
    for noisy in (HFProgress, PrinterCallback):
        trainer.remove_callback(noisy)

    # 5. train, with held-out preference metrics before and after
    score = None
    if eval_dataset is not None and hasattr(args, "beta"):
        def score(model):
            return score_pairs(model, tokenizer, eval_dataset, max_length=args.max_length,
                               batch_size=args.per_device_eval_batch_size)

        before = score(trainer.model)
    trainer.train()
    if score is not None and trainer.is_world_process_zero():
        after = score(trainer.model)
        manifest["evaluation"] = {"before": preference_metrics(before, before, args.beta),
                                  "after": preference_metrics(after, before, args.beta)}

    # 6. save: final weights (safetensors) and tokenizer, then the manifest, last, marks the run complete
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        manifest.update(status="completed", finished_at=_now(), global_step=trainer.state.global_step)
        if hasattr(stage, "reference_strategy"):
            manifest["reference"] = stage.reference_strategy(recipe)
        if models.ref_cache is not None:
            manifest["ref_logp_cache"] = [{"event": event, "split": split, "file": str(file)}
                                          for event, split, file in models.ref_cache.events]
        atomic_write_text(out / RUN_FILE, json.dumps(manifest, indent=2))
    return RunResult(out, manifest)
