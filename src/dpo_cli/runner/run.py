"""One training run, top to bottom: config, data, tokenizer and models, trainer, train, evaluate, save."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback
from transformers.trainer_callback import ProgressCallback as TransformersProgress

from dpo_cli.core import console
from dpo_cli.core.errors import DataError, InputError, Interrupted
from dpo_cli.core.redact import redact
from dpo_cli.core.rundir import RunDir
from dpo_cli.evidence.heldout import HeldOut
from dpo_cli.evidence.plots import plot_after_training
from dpo_cli.evidence.tables import distributed_line, mismatch_warning
from dpo_cli.evidence.template import template_warning
from dpo_cli.evidence.truncation import truncation_warning
from dpo_cli.recipe.schema import Recipe
from dpo_cli.train import checkpoints
from dpo_cli.train.callbacks import CompleteCheckpoints, MetricsFileCallback, ProgressCallback
from dpo_cli.train.config import defaults_note, defaults_record, settle_defaults, trainer_kwargs
from dpo_cli.train.device import DevicePlan, plan_device
from dpo_cli.train.interrupt import GracefulStop
from dpo_cli.train.launch import distributed_record, launched_by_accelerate
from dpo_cli.train.manifest import RunRecord, RunResult, now, open_run
from dpo_cli.train.models import (
    check_chat_template,
    is_vision_language,
    load_models,
    load_processing_class,
    quiet_libraries,
    text_tokenizer,
)
from dpo_cli.train.plan import RunPlan, configure
from dpo_cli.train.ranks import from_main
from dpo_cli.train.scoring import Truncation
from dpo_cli.train.stages import training_stage
from dpo_cli.train.stages.base import PlannedRun, StageInputs, TrainingStage
from dpo_cli.train.throughput import Throughput
from dpo_cli.train.trl_compat import join_processes
from dpo_cli.train.vision import check_images, has_images, judge_note
from dpo_cli.train.watchdog import EarlyStopping, TrainingStopped, Watchdog


def _identity(recipe: Recipe, data_info: dict) -> dict:
    """What a checkpoint records so a resume can refuse a different recipe or different data."""
    # eval: only says what to judge once training is done, so changing it does not make a checkpoint foreign
    return {"recipe": redact(recipe.model_dump(mode="json", exclude={"eval"})),
            "data": {split: info.get("fingerprint") for split, info in data_info.items()}}


def _auto_resume(run: RunDir, is_main: bool, overwrite: bool) -> tuple[str | None, bool]:
    """``--resume auto`` with no complete checkpoint starts from the beginning, so one command serves a requeued job's
    every attempt: the first, and one stopped before its first checkpoint (written over, as --overwrite would). A
    completed run, or files dpo-cli did not write, are never trained over. Returns (resume, overwrite)."""
    found, skipped = checkpoints.newest_complete(run.path)
    if found is not None:
        return "auto", overwrite
    previous = run.read_json(RunDir.MANIFEST)
    if isinstance(previous, dict) and previous.get("status") == "completed":
        raise InputError(f"--resume auto: {run} holds a completed run and no checkpoint to resume from; nothing to "
                         f"do (--overwrite trains it again)")
    if previous is None and run.path.is_dir() and any(run.path.iterdir()):
        raise InputError(f"--resume auto: no complete checkpoint in {run}, and it holds files no dpo-cli run wrote "
                         f"(no {RunDir.MANIFEST}), so training cannot start over in it; choose another output_dir")
    if is_main:
        earlier = f"; the earlier attempt ({previous.get('status')}) is written over" if previous else ""
        incomplete = f" ({len(skipped)} incomplete skipped)" if skipped else ""
        console.note(f"--resume auto: no complete checkpoint in {run} yet{incomplete}: training starts from the "
                     f"beginning{earlier}")
    return None, True


def _resume_point(run: RunDir, resume: str, identity: dict, force: bool) -> Path:
    checkpoint = checkpoints.resolve_resume(run.path, resume, console.warn)
    changes = checkpoints.identity_diff(checkpoints.marker(checkpoint), identity)
    if changes and not force:
        raise InputError(f"{checkpoint} was written by a different recipe or data; pass --resume-force to resume "
                         "anyway. Changed: " + "; ".join(changes))
    return checkpoint


def _held_out(stage: TrainingStage, recipe: Recipe, args, processing, eval_dataset, trainer) -> HeldOut | None:
    """Held-out scoring for this run, or None: no eval data, a stage without it, or model weights sharded over
    several processes (FSDP, ZeRO-3), where one process cannot run a forward pass alone. ``processing`` is TRL's
    processing class: pairs with images are scored with the processor, as the trainer batches them."""
    if stage.evaluation is None or eval_dataset is None:
        return None
    from transformers.integrations import is_deepspeed_zero3_enabled

    if trainer.is_fsdp_enabled or is_deepspeed_zero3_enabled():
        if args.process_index == 0:
            console.note("held-out scoring skipped: the weights are sharded over the processes (FSDP or ZeRO-3); "
                         f"score the saved model afterwards with dpo-cli eval {recipe.output_dir}")
        return None
    if args.process_index != 0:
        return None
    return HeldOut(stage.evaluation, stage.reference(recipe).kind, eval_dataset, processing,
                   Truncation(args.max_length, getattr(args, "truncation_mode", "keep_start")),
                   getattr(args, "beta", None), args.per_device_eval_batch_size,
                   from_start=not stage.reference(recipe).explicit)


def build_trainer(stage: TrainingStage, inputs: StageInputs, data_info: dict, precision: str) -> tuple[Any, Any]:
    """Step 4's trainer: the stage's TRL trainer over ``inputs``, with the on-disk reference log-prob cache where the
    stage keeps one, less transformers' own progress printers. Returns (trainer, that cache or None).

    tests/helpers.py builds its trainers here too, so a test's trainer is the one a run builds.
    """
    ref_cache = stage.reference_cache(inputs.recipe, data_info, precision)
    trainer = stage.build_trainer(replace(inputs, ref_cache=ref_cache))
    for noisy in (TransformersProgress, PrinterCallback):
        trainer.remove_callback(noisy)
    return trainer, ref_cache


@contextlib.contextmanager
def collector_skips_what_is_loaded() -> Iterator[None]:
    """For the run, Python's cycle collector leaves alone every object alive when it starts: the half million that
    importing torch, transformers and TRL made, which full collections (triggered by dataset preparation and the
    steps) would otherwise scan again each time: 1.7-2.3 s of a 9 s one-step run on 50,000 cached pairs, measured.
    Garbage is collected first, and the objects are handed back afterwards, so nothing of an earlier pipeline stage or
    of the run itself outlives its use."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def train(recipe: Recipe, *, overwrite: bool = False, resume: str | None = None,
          resume_force: bool = False) -> RunResult:
    """One training run: the seven steps, each a call below, inside the run's lifecycle (output directory, lock,
    run.json, signals)."""
    quiet_libraries()
    os.environ.update(recipe.env)  # before TRL starts trackers that read them (WANDB_PROJECT, ...)
    stage = training_stage(recipe.stage)  # a stage that makes data runs its own flow (pipeline.run_stage)
    if resume and not stage.resumable:
        raise InputError(f"stage {stage.name} cannot resume from a checkpoint (TRL's trainer for it has no resume); "
                         f"run it again without --resume")

    vision_model = is_vision_language(recipe.model)
    check_images(recipe, stage, vision_model, data_images=False)  # the model alone: said before any data is read

    # 1. config: device and precision from the hardware, the processes from the launcher; the TRL config itself is
    # built once, at the end of step 2, when the data has settled the defaults that depend on it
    device = plan_device(recipe.trainer)
    processes = join_processes(trainer_kwargs(recipe, device))
    # every rank (torchrun, accelerate launch) resolves the same recipe; only the main process writes and reports
    is_main = processes.process_index == 0
    if resume == "auto":
        resume, overwrite = _auto_resume(RunDir(recipe.output_dir), is_main, overwrite)
    # a signal is handled from here to the end (what it does depends on the phase); open_run checks output_dir,
    # starts run.json and locks output_dir against other runs, as for a stage that makes data
    stopper = GracefulStop(stage.name, stage.step_loop)
    with stopper, open_run(recipe, device, processes.num_processes, is_main, overwrite=overwrite,
                           resuming=bool(resume)) as (run, record), collector_skips_what_is_loaded():
        manifest = record.manifest

        # 2. data, checked before any weights are loaded; then this run's defaults, and its TRL config built from them
        data = _load_data(stage, recipe, run, record, resume, resume_force)
        run_plan = _settle(recipe, device, processes.num_processes, record)

        # 3. tokenizer (a vision-language model's processor) and models
        processing, models = _load_models(stage, run_plan, data, vision_model, is_main)

        # 4. trainer, with checkpoints a resume can trust, a graceful stop on SIGTERM/SIGINT, the watchdog
        built = _build(stage, run_plan, data, processing, models, run, record, stopper)

        # 5. train, with the held-out pairs scored first
        held_out = _held_out(stage, run_plan.settled, run_plan.config, processing, data.eval, built.trainer)
        _train(built, held_out, data.checkpoint, run, record, stopper)

        # 6. evaluate: the held-out pairs again, against the same reference (a signal here skips to the save)
        _evaluate(built.trainer, held_out, manifest, stopper)

        # 7. save: final weights (safetensors) and tokenizer, then the manifest, last, marks the run complete
        _save(run_plan, built, held_out, run, record, stopper)
    return RunResult(run.path, manifest, is_main)


@dataclass(frozen=True)
class _Data:
    """Step 2's data: the splits TRL trains and evaluates on, what a checkpoint records of them, where to resume."""

    train: Any
    eval: Any
    identity: dict
    checkpoint: Path | None


@dataclass(frozen=True)
class _Built:
    """Step 4's trainer, its reference log-prob cache (or None), and the callbacks steps 5 and 7 read back."""

    trainer: Any
    ref_cache: Any
    throughput: Throughput
    watchdog: Watchdog | None
    early_stop: EarlyStopping | None


def _load_data(stage: TrainingStage, recipe: Recipe, run: RunDir, record: RunRecord, resume: str | None,
               resume_force: bool) -> _Data:
    """Step 2: the data, read and checked before any weights are loaded, and the checkpoint a resume starts from."""
    manifest = record.manifest
    train_dataset, eval_dataset, manifest["data"] = stage.load_data(recipe)
    identity = _identity(recipe, manifest["data"])
    checkpoint = _resume_point(run, resume, identity, resume_force) if resume else None
    if checkpoint:
        manifest["resumed_from"] = str(checkpoint)
    if record.is_main:
        run.write_recipe(recipe.resolved_yaml())
    record.update()
    return _Data(train_dataset, eval_dataset, identity, checkpoint)


def _settle(recipe: Recipe, device: DevicePlan, processes: int, record: RunRecord) -> RunPlan:
    """Step 2's end: the defaults that depend on this run (a precomputed reference, Liger kernels), now that its data
    is known, and the run's plan with its TRL config, built from them once."""
    # recipe.resolved.yaml keeps the recipe as given (auto), run.json what auto became and why
    # decided once, on the main process: ranks and nodes with caches or installs of their own would otherwise
    # choose differently (one precomputing, another not: a silent mix, or a hang in the reference pass)
    settled, defaults = from_main(settle_defaults(
        recipe, PlannedRun(device, processes, lambda: record.manifest["data"]["train"])) if record.is_main else None)
    run_plan = configure(recipe, settled, defaults, device, processes)
    record.update(defaults=defaults_record(defaults))
    if record.is_main and (note := defaults_note(defaults)):
        console.note(note)
    return run_plan


def _load_models(stage: TrainingStage, run_plan: RunPlan, data: _Data, vision_model: bool,
                 is_main: bool) -> tuple[Any, Any]:
    """Step 3: the tokenizer (a vision-language model's processor), checked against the data, then the models.
    Returns (processing class, models)."""
    recipe = run_plan.settled
    images = has_images(data.train.column_names)
    check_images(recipe, stage, vision_model, images)
    processing = load_processing_class(recipe.model)
    tokenizer = text_tokenizer(processing)
    check_chat_template(recipe, stage.data_kind, processing)
    # both measure rendered text: on image rows the tokens each image expands to are not in it, so they would
    # say too little (TRL's vision collators truncate image rows as they batch them)
    if is_main and not images and (warning := truncation_warning(tokenizer, data.train, run_plan.config)):
        console.warn(warning)
    if is_main and not images and (warning := template_warning(tokenizer, data.train)):
        console.warn(f"train data: {warning}")
    if is_main and images and (note := judge_note(stage, recipe)):
        console.note(note)
    return processing, load_models(recipe, stage, run_plan.device)


def _build(stage: TrainingStage, run_plan: RunPlan, data: _Data, processing, models, run: RunDir, record: RunRecord,
           stopper: GracefulStop) -> _Built:
    """Step 4: the stage's TRL trainer with our callbacks: metrics file, progress, complete checkpoints, graceful stop,
    throughput, and the watchdog and early stopping where the stage's loop is ours to watch."""
    recipe, args, device, manifest = run_plan.settled, run_plan.config, run_plan.device, record.manifest
    resumed_step = int(data.checkpoint.name.split("-")[1]) if data.checkpoint else None
    throughput = Throughput.for_run(models.policy, stage.reference(recipe).kind, device, run_plan.processes)
    callbacks = [throughput, MetricsFileCallback(run.metrics_file, keep_until=resumed_step), ProgressCallback(),
                 stopper, CompleteCheckpoints(args, data.identity)]
    watchdog = Watchdog() if recipe.watchdog and stage.step_loop else None
    early_stop = EarlyStopping(**recipe.early_stopping.model_dump()) if recipe.early_stopping else None
    callbacks += [c for c in (watchdog, early_stop) if c is not None]
    trainer, ref_cache = build_trainer(stage, StageInputs(
        recipe, args, models.policy, models.reference, processing, data.train, data.eval, callbacks,
        models.peft_config), manifest["data"], device.precision)
    # what accelerate set up, which a launcher's config may not have got (FSDP on a machine without GPUs)
    record.update(distributed=distributed_record(trainer, args))
    if record.is_main and (manifest["distributed"]["processes"] > 1 or launched_by_accelerate()):
        console.note(distributed_line(manifest["distributed"], "runs as"))
        if "asked" in manifest["distributed"]:
            console.warn(mismatch_warning(manifest["distributed"], device.device))
    if len(trainer.train_dataset) == 0:
        raise DataError(f"no training rows are left once TRL has prepared them: every prompt fills "
                        f"trainer.max_length ({args.max_length}), and TRL drops such rows; raise max_length or "
                        f"shorten the prompts (dpo-cli inspect-data --tokenizer shows the lengths)")
    return _Built(trainer, ref_cache, throughput, watchdog, early_stop)


def _train(built: _Built, held_out: HeldOut | None, checkpoint: Path | None, run: RunDir, record: RunRecord,
           stopper: GracefulStop) -> None:
    """Step 5: the held-out pairs scored before training, then TRL's training loop; a signal, or the watchdog, ends
    the run here with the newest complete checkpoint named."""
    trainer, watchdog, early_stop, manifest = built.trainer, built.watchdog, built.early_stop, record.manifest
    if held_out is not None:
        held_out.score_before(trainer)
    stopper.phase = "train"
    try:
        trainer.train(**({"resume_from_checkpoint": str(checkpoint)} if checkpoint else {}))
    except checkpoints.SAVE_ERRORS as exc:
        failure = checkpoints.save_failure(run.path, trainer.state.global_step, exc)
        if failure is None:
            raise
        raise failure from exc
    if stopper.signum is not None and trainer.state.global_step < trainer.state.max_steps:
        saved = checkpoints.newest_complete(run.path)[0]
        raise Interrupted(f"stopped by {stopper.name()} after step {trainer.state.global_step}; checkpoint "
                          f"saved in {saved}; resume with the same command plus --resume auto", stopper.signum)
    if watchdog is not None and watchdog.warnings:
        manifest["warnings"] = watchdog.warnings
    if early_stop is not None:
        manifest["early_stopping"] = early_stop.summary()
    if watchdog is not None and watchdog.stopped_at is not None:
        record.update(status="failed", finished_at=now(), global_step=trainer.state.global_step,
                      error=watchdog.message(), checkpoint=str(watchdog.checkpoint))
        raise TrainingStopped(watchdog.message())


def _evaluate(trainer, held_out: HeldOut | None, manifest: dict, stopper: GracefulStop) -> None:
    """Step 6: the held-out pairs scored again, against the same reference; a signal here skips to the save."""
    stopper.phase = "evaluate"
    try:
        if held_out is not None and stopper.signum is None:
            manifest["evaluation"] = held_out.figures(trainer)
    except Interrupted:
        pass


def _save(run_plan: RunPlan, built: _Built, held_out: HeldOut | None, run: RunDir, record: RunRecord,
          stopper: GracefulStop) -> None:
    """Step 7: the final weights (safetensors) and tokenizer, the plots, then run.json, last, marks the run
    complete."""
    trainer, manifest = built.trainer, record.manifest
    stopper.phase = "save"
    checkpoints.save_final(trainer, run.path)  # every rank calls it (sharded states are gathered); main writes
    if built.ref_cache is not None:
        manifest["ref_logp_cache"] = [{"event": event, "split": split, "file": str(file)}
                                      for event, split, file in built.ref_cache.events]
    if record.is_main:
        checkpoints.replace_pickled_args(run.path, run_plan.config)
        if run_plan.settled.plot:
            manifest["plots"] = plot_after_training(run, manifest.get("evaluation"))
    if stopper.signum is not None:
        raise Interrupted(f"stopped by {stopper.name()} after training; the final model is saved in {run}"
                          + ("" if "evaluation" in manifest or held_out is None else
                             " (the held-out figures were left out)"), stopper.signum)
    record.update(status="completed", finished_at=now(), global_step=trainer.state.global_step,
                  reference=run_plan.reference, throughput=built.throughput.summary())
