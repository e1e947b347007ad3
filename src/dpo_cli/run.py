"""One training run, top to bottom: config, data, tokenizer and models, trainer, train, evaluate, save."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import checkpoints
from .atomic import atomic_write_text
from .errors import DataError, InputError, RecipeError
from .models import DevicePlan, plan_device
from .recipe import Recipe, yaml_dump
from .redact import redact
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
    recipe: Any = None  # the validated Recipe, for stages that read their own sections (reward:)


@dataclass
class RunResult:
    output_dir: Path
    manifest: dict
    is_main: bool = True  # under torchrun/accelerate, only the main process reports


def trainer_kwargs(recipe: Recipe, plan: DevicePlan) -> dict[str, Any]:
    """The keyword arguments of the stage's TRL config: device fields, then the recipe's trainer: section."""
    stage = get_stage(recipe.stage)
    derived = stage.trainer_fields(recipe) if hasattr(stage, "trainer_fields") else {}
    return {"report_to": "none", **plan.trainer_fields(), **derived, **recipe.trainer,
            "output_dir": recipe.output_dir, "seed": recipe.seed}


def build_config(recipe: Recipe, plan: DevicePlan):
    from .trackers import check_trackers

    check_trackers(recipe.trainer.get("report_to"))
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


def check_output_dir(recipe: Recipe, overwrite: bool) -> Path:
    out = Path(recipe.output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output directory {out} is not empty; pass --overwrite to write over it, "
                         f"or choose another with output_dir=DIR")
    return out


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


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


def _identity(recipe: Recipe, data_info: dict) -> dict:
    """What a checkpoint records so a resume can refuse a different recipe or different data."""
    return {"recipe": redact(recipe.model_dump(mode="json")),
            "data": {split: info.get("fingerprint") for split, info in data_info.items()}}


def _resume_point(out: Path, resume: str, identity: dict, force: bool, warn) -> Path:
    checkpoint = checkpoints.resolve_resume(out, resume, warn)
    recorded = json.loads((checkpoint / checkpoints.MARKER).read_text(encoding="utf-8"))
    changes = checkpoints.identity_diff(recorded, identity)
    if changes and not force:
        raise InputError(f"{checkpoint} was written by a different recipe or data; pass --resume-force to resume "
                         "anyway. Changed: " + "; ".join(changes))
    return checkpoint


def _score_held_out(evaluation: str, model, tokenizer, eval_dataset, args):
    from .evaluate import score_pairs, score_reward_pairs

    scorer = score_pairs if evaluation == "preference" else score_reward_pairs
    return scorer(model, tokenizer, eval_dataset, max_length=args.max_length,
                  batch_size=args.per_device_eval_batch_size)


def _before_and_after(evaluation: str, before, trainer, tokenizer, eval_dataset, args) -> dict:
    """Held-out figures for run.json; ``before`` was scored with the starting weights, the reference of DPO."""
    from .evaluate import kl_on_chosen, preference_metrics, reward_model_metrics

    after = _score_held_out(evaluation, trainer.model, tokenizer, eval_dataset, args)
    if evaluation == "reward":
        return {"before": reward_model_metrics(before), "after": reward_model_metrics(after)}
    # before training the policy is the reference: its KL is 0 by construction
    figures = {"before": {**preference_metrics(before, before, args.beta),
                          "kl_chosen_per_token": 0.0, "kl_chosen_per_sequence": 0.0},
               "after": preference_metrics(after, before, args.beta)}
    if getattr(trainer, "ref_model", None) is not None:  # a shared (LoRA) or precomputed reference has no model here
        figures["after"].update(kl_on_chosen(trainer.model, trainer.ref_model, tokenizer, eval_dataset,
                                             max_length=args.max_length,
                                             batch_size=max(1, args.per_device_eval_batch_size // 4)))
    return figures


def train(recipe: Recipe, *, overwrite: bool = False, resume: str | None = None, resume_force: bool = False,
          warn=print) -> RunResult:
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    from .callbacks import MetricsFileCallback, ProgressCallback
    from .interrupt import GracefulStop, Interrupted
    from .models import load_models, load_tokenizer
    from .watchdog import EarlyStopping, TrainingStopped, Watchdog

    _quiet_libraries()
    os.environ.update(recipe.env)  # before TRL starts trackers that read them (WANDB_PROJECT, ...)
    stage = get_stage(recipe.stage)

    # 1. config: device and precision from the hardware, the rest from the recipe
    plan = plan_device(recipe.trainer)
    args = build_config(recipe, plan)
    # every rank (torchrun, accelerate launch) resolves the same recipe; only the main process writes and reports
    is_main = args.process_index == 0
    out = Path(recipe.output_dir) if resume else check_output_dir(recipe, overwrite)
    _wait_for_everyone()  # no rank may look at output_dir after the main process has started writing to it
    versions = _versions()
    manifest = {"dpo_cli_version": versions["dpo-cli"], "versions": versions, "git_commit": _git_commit(),
                "stage": recipe.stage, "started_at": _now(), "finished_at": None, "status": "running",
                "device": {"device": plan.device, "gpus": plan.gpus, "precision": plan.precision,
                           "reason": plan.reason, "processes": args.world_size, "host": platform.node()}}

    # 2. data, checked before any weights are loaded
    try:
        train_dataset, eval_dataset, manifest["data"] = load_data(recipe, stage.DATA_KIND)
    except DataError as exc:
        if exc.line is None:  # not about a row's shape (a missing file, an empty filter result)
            raise
        # a row the stage cannot use: say what this stage reads, beside what the row holds
        raise DataError(f"stage {recipe.stage} reads {stage.DATA_EXPECTS}; {exc.reason}", file=exc.file,
                        line=exc.line, field=exc.field) from None
    identity = _identity(recipe, manifest["data"])
    checkpoint = _resume_point(out, resume, identity, resume_force, warn) if resume else None
    if checkpoint:
        manifest["resumed_from"] = str(checkpoint)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RESOLVED_RECIPE, yaml_dump(redact(recipe.model_dump(mode="json"))))
        atomic_write_text(out / RUN_FILE, json.dumps(redact(manifest), indent=2))

    # 3. tokenizer and models
    tokenizer = load_tokenizer(recipe.model)
    models = load_models(recipe, plan)

    # 4. trainer, with checkpoints that are complete or absent, a graceful stop on SIGTERM/SIGINT, the watchdog
    stopper = GracefulStop()
    resumed_step = int(checkpoint.name.split("-")[1]) if checkpoint else None
    callbacks = [MetricsFileCallback(out / METRICS_FILE, keep_until=resumed_step), ProgressCallback(), stopper]
    watchdog = Watchdog() if recipe.watchdog else None
    early_stop = EarlyStopping(**recipe.early_stopping.model_dump()) if recipe.early_stopping else None
    callbacks += [c for c in (watchdog, early_stop) if c is not None]
    trainer = stage.build_trainer(StageInputs(args, models.policy, models.reference, tokenizer, train_dataset,
                                              eval_dataset, callbacks, models.peft_config, models.ref_cache, recipe))
    for noisy in (HFProgress, PrinterCallback):
        trainer.remove_callback(noisy)
    checkpoints.install(trainer, identity)
    if watchdog is not None:
        watchdog.attach(trainer)

    # 5. train, with held-out metrics before and after: preference metrics (DPO) or pairwise accuracy (reward)
    evaluation = getattr(stage, "EVALUATION", None) if is_main and eval_dataset is not None else None
    before = _score_held_out(evaluation, trainer.model, tokenizer, eval_dataset, args) if evaluation else None
    with stopper:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stopper.signum is not None:
        saved = checkpoints.newest_complete(out)[0]
        raise Interrupted(f"stopped by {signal.Signals(stopper.signum).name} after step {trainer.state.global_step}"
                          f"; checkpoint saved in {saved}; resume with the same command plus --resume auto",
                          stopper.signum)
    if watchdog is not None and watchdog.warnings:
        manifest["warnings"] = watchdog.warnings
    if early_stop is not None:
        manifest["early_stopping"] = early_stop.summary()
    if watchdog is not None and watchdog.stopped_at is not None:
        if is_main:
            manifest.update(status="failed", finished_at=_now(), global_step=trainer.state.global_step,
                            error=watchdog.message(), checkpoint=str(watchdog.checkpoint))
            atomic_write_text(out / RUN_FILE, json.dumps(redact(manifest), indent=2))
        raise TrainingStopped(watchdog.message())
    if evaluation:
        manifest["evaluation"] = _before_and_after(evaluation, before, trainer, tokenizer, eval_dataset, args)

    # 6. save: final weights (safetensors) and tokenizer, then the manifest, last, marks the run complete
    trainer.save_model(str(out))  # every rank must call it (sharded states are gathered); the main one writes
    manifest.update(status="completed", finished_at=_now(), global_step=trainer.state.global_step,
                    reference=stage.reference_strategy(recipe))
    if models.ref_cache is not None:
        manifest["ref_logp_cache"] = [{"event": event, "split": split, "file": str(file)}
                                      for event, split, file in models.ref_cache.events]
    if is_main:
        checkpoints.replace_pickled_args(out, args)
        if recipe.plot:
            from .plots import plot_after_training

            manifest["plots"] = plot_after_training(out, manifest.get("evaluation"))
        atomic_write_text(out / RUN_FILE, json.dumps(redact(manifest), indent=2))
    return RunResult(out, manifest, is_main)
