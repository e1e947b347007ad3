"""A run's plan, made once: the device, the defaults settled for the run, the TRL config built from them, and what a
dry run adds (memory, the data it checked). ``--dry-run`` prints it (text and JSON) and ``train`` executes it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dpo_cli.core.redact import redact
from dpo_cli.recipe.schema import Recipe
from dpo_cli.train.config import build_config, trainer_kwargs
from dpo_cli.train.device import DevicePlan
from dpo_cli.train.launch import global_batch
from dpo_cli.train.memory import MemoryPlan
from dpo_cli.train.stages import get_stage
from dpo_cli.train.stages.base import Default, Stage
from dpo_cli.train.vision import VisionFacts


@dataclass(frozen=True)
class RunPlan:
    """One run, decided: what ``train`` executes and ``--dry-run`` prints."""

    recipe: Recipe  # as given (recipe.resolved.yaml keeps it so; run.json's defaults say what auto became)
    settled: Recipe  # what runs: ``recipe`` with the keys its stage decides per run written in
    device: DevicePlan
    processes: int
    defaults: tuple[Default, ...]
    config: Any  # the stage's TRL config, built once from ``settled``; None for a stage that makes data
    config_fields: dict[str, Any]  # the config fields the recipe sets, device fields as the planned device gets them
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
    def config_class(self) -> str | None:
        return type(self.config).__name__ if self.config is not None else None

    @property
    def global_batch(self) -> dict[str, int] | None:
        return global_batch(self.config, self.processes) if self.config is not None else None

    def to_json(self) -> dict[str, Any]:
        """The plan as --dry-run --json prints it, for scripts: bytes as integers, secrets redacted."""
        memory = self.memory
        return {
            "recipe": redact(self.recipe.model_dump(mode="json")),
            "config_class": self.config_class,
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
              processes: int) -> RunPlan:
    """The plan of a run whose defaults are settled (``settled``): its TRL config, built here and only here."""
    stage = get_stage(recipe.stage)
    config = build_config(settled, device) if stage.trains else None  # a data-making stage has no TRL config
    fields: dict[str, Any] = {}
    if config is not None:
        planned = device.trainer_fields()  # as the GPU gets them, also when planned from a CPU machine
        fields = {k: planned[k] if k in planned else getattr(config, k) for k in trainer_kwargs(settled, device)}
    return RunPlan(recipe, settled, device, processes, tuple(defaults), config, fields,
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
