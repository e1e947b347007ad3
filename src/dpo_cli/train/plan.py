"""A run's plan, made once: the device, the defaults settled for the run, the TRL config built from them, and what a
dry run adds (memory, the data it checked). ``--dry-run`` prints it (text and JSON) and ``train`` executes it.

A dry run plans from TRL's config defaults, read from a cache, and imports no TRL (that import is most of a dry run's
time); the run builds TRL's config itself, once, and TRL's own checks of it run then, before any data or weights
load."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import DataError, InputError, ModelLoadError, RecipeError
from dpo_cli.core.redact import redact
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.trl_fields import config_fields
from dpo_cli.train.config import build_config, planned_config, settle_defaults, trainer_kwargs
from dpo_cli.train.device import DevicePlan, plan_device
from dpo_cli.train.launch import global_batch
from dpo_cli.train.memory import MemoryPlan, estimate_memory
from dpo_cli.train.models import check_chat_template, is_vision_language, load_processing_class
from dpo_cli.train.rewards import SpecError, check_columns, parse_spec
from dpo_cli.train.stages import get_stage
from dpo_cli.train.stages.base import Default, PlannedRun, Stage, TrainingStage
from dpo_cli.train.vision import (
    PromptImageTokens,
    VisionFacts,
    check_images,
    has_images,
    judge_note,
    vision_facts,
)


@dataclass(frozen=True)
class RunPlan:
    """One run, decided: what ``train`` executes and ``--dry-run`` prints."""

    recipe: Recipe  # as given (recipe.resolved.yaml keeps it so; run.json's defaults say what auto became)
    settled: Recipe  # what runs: ``recipe`` with the keys its stage decides per run written in
    device: DevicePlan
    processes: int
    defaults: tuple[Default, ...]
    # the stage's TRL config, built once from ``settled``; at a dry run, the values it will have (TRL's defaults under
    # the recipe's, no TRL imported); None for a stage that makes data
    config: Any
    config_class: str | None
    trl_checked: bool  # TRL's own checks of the config ran (built by TRL), or wait for the run (a dry run)
    config_fields: dict[str, Any]  # the config fields the recipe sets, as given to TRL
    reference: str  # what the policy is compared to, in words
    safety: str  # what protects the run: watchdog, graceful stop, resume, or what the stage's TRL trainer lacks
    # what a dry run adds: the memory plan (or why there is none), the model it was planned from, every data split
    # read and checked, a vision-language model's facts, and pipeline notes (what an earlier stage will write)
    memory: MemoryPlan | str | None = None
    planned_model: str | None = None
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    vision: VisionFacts | None = None
    notes: tuple[str, ...] = ()

    @property
    def global_batch(self) -> dict[str, int] | None:
        return global_batch(self.config, self.processes) if self.config is not None else None

    def to_json(self) -> dict[str, Any]:
        """The plan as --dry-run --json prints it, for scripts: bytes as integers, secrets redacted."""
        memory = self.memory
        return {
            "recipe": redact(self.recipe.model_dump(mode="json")),
            "config_class": self.config_class,
            "trl_checked": self.trl_checked,
            "config_fields": redact(self.config_fields),
            "device": dataclasses.asdict(self.device),
            "processes": self.processes,
            "global_batch": self.global_batch,
            "defaults": [dataclasses.asdict(d) for d in self.defaults],
            "reference": self.reference,
            "safety": self.safety,
            "memory": memory.to_json() if isinstance(memory, MemoryPlan) else {"unavailable": memory},
            "data": {split: found["rows"] for split, found in self.data.items()},
            "vision": self.vision.to_json() if self.vision is not None else None,
            "notes": list(self.notes),
        }


def configure(recipe: Recipe, settled: Recipe, defaults: list[Default], device: DevicePlan,
              processes: int, *, build: bool = True) -> RunPlan:
    """The plan of a run whose defaults are settled (``settled``): its TRL config, built here and only here; or, with
    ``build`` false (a dry run), the values that config will have, without TRL."""
    stage = get_stage(recipe.stage)
    config, config_class = None, None  # a data-making stage has no TRL config
    if isinstance(stage, TrainingStage):
        config = build_config(settled, device) if build else planned_config(settled, device)
        config_class = config_fields(stage.config).name
    fields: dict[str, Any] = {}
    if config is not None:  # as the recipe gives them to TRL, device fields as the planned device gets them
        planned = device.trainer_fields()  # (build_config turns bf16 off to plan a GPU from a CPU machine)
        fields = {k: planned.get(k, v) for k, v in trainer_kwargs(settled, device).items()}
    return RunPlan(recipe, settled, device, processes, tuple(defaults), config, config_class,
                   build and config is not None, fields,
                   stage.reference(settled).description, safety(stage))


def safety(stage: Stage) -> str:
    if not stage.trains:
        return ("makes data, trains nothing: no checkpoints or --resume (a stopped run starts again); under several "
                "processes each samples its share of the prompts and the main one writes the files (engine vllm: one "
                "process)")
    if stage.step_loop:
        return "watchdog, graceful stop on SIGTERM/SIGINT and --resume"
    return (f"TRL's {stage.name} trainer runs its own loop: no NaN watchdog, no early stopping, no --resume; "
            "SIGTERM/SIGINT stop the run at the end of a step")


@dataclass(frozen=True)
class Upstream:
    """An earlier stage of a pipeline, as a dry run sees it: its output is not written yet."""

    name: str
    output_dir: Path
    model: str  # what it starts from: its output model has that shape


def plan(recipe: Recipe, hardware: DevicePlan | None = None, upstream: tuple[Upstream, ...] = (),
         processes: int = 1) -> tuple[RunPlan, InputError | None]:
    """The run's plan as --dry-run prints it: device decision, the defaults this run gets, the TRL config values they
    give (planned without TRL: train/plan.py), the reference, the memory plan, and every data row checked.
    ``hardware`` plans for a device this machine may not have (--gpu-memory), ``processes`` for the process count the
    run will have (--nproc x --nnodes). In a pipeline, data an ``upstream`` stage writes is said rather than read,
    and a model it writes is planned as the model it starts from (``planned_model``).

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
    run_plan = configure(recipe, settled, defaults, device, processes, build=False)
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
