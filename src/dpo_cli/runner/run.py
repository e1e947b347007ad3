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
from dpo_cli.core.errors import DataError, InputError, Interrupted, ModelLoadError, RecipeError
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
from dpo_cli.train.memory import estimate_memory
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
from dpo_cli.train.rewards import SpecError, check_columns, parse_spec
from dpo_cli.train.scoring import Truncation
from dpo_cli.train.stages import get_stage, training_stage
from dpo_cli.train.stages.base import PlannedRun, Stage, StageInputs, TrainingStage
from dpo_cli.train.throughput import Throughput
from dpo_cli.train.trl_compat import join_processes
from dpo_cli.train.vision import PromptImageTokens, check_images, has_images, judge_note, vision_facts
from dpo_cli.train.watchdog import EarlyStopping, TrainingStopped, Watchdog


@dataclass(frozen=True)
class Upstream:
    """An earlier stage of a pipeline, as a dry run sees it: its output is not written yet."""

    name: str
    output_dir: Path
    model: str  # what it starts from: its output model has that shape


def plan(recipe: Recipe, hardware: DevicePlan | None = None, upstream: tuple[Upstream, ...] = (),
         processes: int = 1) -> tuple[RunPlan, InputError | None]:
    """The run's plan as --dry-run prints it: device decision, the defaults this run gets, the TRL config built from
    them, the reference, the memory plan, and every data row checked. ``hardware`` plans for a device this machine
    may not have (--gpu-memory), ``processes`` for the process count the run will have (--nproc x --nnodes). In a
    pipeline, data an ``upstream`` stage writes is said rather than read, and a model it writes is planned as the
    model it starts from (``planned_model``).

    Returns (plan, the error the run would stop at for its data, or None): the plan stands without the data, so the
    caller prints it, then raises the error."""
    stage = get_stage(recipe.stage)
    notes: list[str] = []
    device = plan_device(recipe.trainer, hardware)
    # every row read and checked, nothing written (no rejects file); the defaults count the training rows from it
    checked, data_error = {}, None
    # a model an earlier pipeline stage writes is not here to read: checked when that stage has run
    vision, vision_model = None, is_vision_language(recipe.model)
    prompt_tokens = _prompt_image_tokens(recipe) if vision_model else None
    try:
        checked = stage.check_data(recipe, prompt_tokens)
    except DataError as exc:
        writer = _writer(exc.file, upstream)
        if writer is None:
            data_error = exc
        else:
            notes.append(f"{exc.file} is written by stage {writer.name}: read and checked when that stage has run")
    if data_error is None and checked and _writer(recipe.model.tokenizer or recipe.model.name_or_path,
                                                  upstream) is None:
        data_error = _template_error(recipe, stage)
    train = checked.get("train")
    if data_error is None:
        try:
            check_images(recipe, stage, vision_model, has_images(train["columns"] if train else ()))
        except InputError as exc:
            data_error = exc
    if vision_model and data_error is None:
        vision = vision_facts(recipe)
        if has_images(train["columns"] if train else ()):
            vision = replace(vision, judge=judge_note(stage, recipe))
    if train is not None and data_error is None and stage.uses_reward and recipe.reward is not None:
        data_error = _reward_columns(recipe, train["columns"])
    # as load_splits records it for a run; None when the data is not here (the default says it could not count)
    train_data = {"rows": train["rows"] - train.get("held_out", 0), "fingerprint": train["fingerprint"]} \
        if train else None

    settled, defaults = settle_defaults(recipe, PlannedRun(device, processes, lambda: train_data))
    run_plan = configure(recipe, settled, defaults, device, processes)
    if data_error is None and vision is not None and prompt_tokens is not None and run_plan.config is not None:
        data_error = prompt_tokens.error(vision.tokens_per_image, stage.image_prompt_limit(run_plan.config))
    planned = _stand_ins(settled, upstream, notes)
    try:
        memory = estimate_memory(planned, device, run_plan.config)
    except ModelLoadError as exc:  # a hub model this machine cannot reach: the rest of the plan still stands
        memory = f"unavailable: {exc}"
    return replace(run_plan, memory=memory, planned_model=planned.model.name_or_path, data=checked, vision=vision,
                   notes=tuple(notes)), data_error


def _prompt_image_tokens(recipe: Recipe) -> PromptImageTokens | None:
    """What measures the image rows' prompts as the data is checked; None when the model's processor is not here
    (a hub name offline: the plan says so elsewhere)."""
    try:
        return PromptImageTokens(load_processing_class(recipe.model))
    except ModelLoadError:
        return None


def _reward_columns(recipe: Recipe, columns: list[str]) -> InputError | None:
    """The run's own check that every column a reward function reads is in the data, made before any weight loads."""
    try:
        check_columns([parse_spec(entry) for entry in recipe.reward.functions], columns)
    except SpecError as exc:
        return RecipeError(str(exc), field="reward.functions")
    return None


def _template_error(recipe: Recipe, stage: Stage) -> InputError | None:
    """A dry run renders the first training row with the tokenizer (no weights): a missing or failing chat
    template, or a file given as the model, fails the plan as it would fail the run."""
    from dpo_cli.core.builtins import resolve_builtin

    local = Path(resolve_builtin(recipe.model.tokenizer or recipe.model.name_or_path)).expanduser()
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        return None  # a config.json of shapes to plan from: no tokenizer to render with
    try:
        check_chat_template(recipe, stage.data_kind, load_processing_class(recipe.model))
    except ModelLoadError as exc:
        # a file is never a model; a hub name, or a path of the machine the run is planned for, is for the run to find
        return exc if local.exists() and not local.is_dir() else None
    except InputError as exc:
        return exc
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _writer(path: object, upstream: tuple[Upstream, ...]) -> Upstream | None:
    """The earlier pipeline stage whose output directory holds ``path``, if any."""
    if path is None:
        return None
    resolved = Path(str(path)).resolve()
    return next((u for u in upstream if resolved.is_relative_to(u.output_dir.resolve())), None)


def _stand_ins(recipe: Recipe, upstream: tuple[Upstream, ...], notes: list[str]) -> Recipe:
    """The recipe the memory plan reads: a model (policy, reference, reward model) that an earlier stage writes is
    planned as the model that stage starts from."""
    def stand_in(path: str | None) -> str | None:
        writer = _writer(path, upstream)
        if writer is None or Path(path).exists():  # a re-run finds what complete stages wrote
            return path
        notes.append(f"{path} is written by stage {writer.name}: planned with the shape of {writer.model}")
        return writer.model

    update: dict[str, Any] = {"model": recipe.model.model_copy(
        update={"name_or_path": stand_in(recipe.model.name_or_path)})}
    if recipe.ref_model.name_or_path:
        update["ref_model"] = recipe.ref_model.model_copy(
            update={"name_or_path": stand_in(recipe.ref_model.name_or_path)})
    if recipe.reward is not None and recipe.reward.model:
        update["reward"] = recipe.reward.model_copy(update={"model": stand_in(recipe.reward.model)})
    return recipe.model_copy(update=update)




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
