"""The two stage contracts: a TrainingStage (its TRL config and trainer) and a DataStage (the data it makes), and
what both declare (data, reference, reward, sampling, images)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from dpo_cli.core.errors import DataError
from dpo_cli.data.load import check_data, load_splits
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.trl_fields import import_config
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.device import DevicePlan

if TYPE_CHECKING:  # types only: reading a recipe imports no torch, transformers or TRL
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import (
        PreTrainedModel,
        PreTrainedTokenizerBase,
        ProcessorMixin,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from dpo_cli.train.manifest import RunResult
    from dpo_cli.train.refcache import RefLogpCache

ReferenceKind = Literal["none", "shared", "copy", "separate", "precomputed", "trainer-copy"]


@dataclass(frozen=True)
class ReferencePlan:
    """Where a stage's reference log-probs come from, decided from the recipe alone (the dry-run prints it).

    none: no reference; shared: the policy with its LoRA adapter disabled; copy: a frozen copy of the starting
    weights that dpo-cli loads; separate: another model (or adapter, or quantized copy) named by ref_model;
    precomputed: log-probs computed once before training, no reference in memory afterwards; trainer-copy: a frozen
    copy that the TRL trainer makes itself.
    """

    kind: ReferenceKind
    description: str
    explicit: bool = False  # ref_model names the reference (another model, an adapter or a quantization)

    @property
    def weights_in_memory(self) -> bool:
        """A second set of weights is held while training (what the memory plan counts)."""
        return self.kind in ("copy", "separate", "trainer-copy")


NO_REFERENCE = ReferencePlan("none", "none")

# Prompt length a memory plan assumes where a stage's config does not bound it (generation sees whole prompts).
ASSUMED_PROMPT_TOKENS = 512


@dataclass(frozen=True)
class SamplingPlan:
    """What a stage that samples holds while it generates, for the memory plan: the KV cache of ``sequences``
    sequences of up to ``tokens`` tokens (prompt and completion), and the reward models that judge them."""

    sequences: int
    tokens: int
    reward_models: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedRun:
    """What a stage's run-dependent defaults are decided from: the device, the processes, the training data."""

    device: DevicePlan
    processes: int
    # load_splits' record of the training data ({"rows", "fingerprint", ...}), read on first need; None when the
    # data cannot be read here (a dry run on a machine without it)
    train_data: Callable[[], dict | None]


@dataclass(frozen=True)
class Default:
    """One recipe key decided for a run: its value, whether the recipe set it, and why (the dry-run prints it)."""

    key: str  # dotted recipe key: "ref_model.precompute", "trainer.use_liger_kernel"
    value: Any
    reason: str
    explicit: bool = False  # the recipe set the key itself; it is never changed


@dataclass
class StageInputs:
    """Everything a training stage needs to build its TRL trainer."""

    recipe: Recipe
    args: TrainingArguments  # the stage's TRL config (every TRL config is a TrainingArguments)
    model: PreTrainedModel  # the policy; TRL applies ``peft_config`` to it
    ref_model: PreTrainedModel | PeftModel | None  # the reference weights the stage's plan holds, if any
    tokenizer: PreTrainedTokenizerBase | ProcessorMixin  # TRL's processing_class (a VLM's processor)
    train_dataset: Dataset
    eval_dataset: Dataset | None
    callbacks: list[TrainerCallback] = field(default_factory=list)
    peft_config: LoraConfig | None = None  # a peft LoraConfig for the trainer to apply (lora: section)
    ref_cache: RefLogpCache | None = None  # reference log-probs precomputed and cached on disk


class MakesData(Protocol):
    """A data-making stage's whole run: reads the recipe, writes its files and run.json in output_dir."""

    def __call__(self, recipe: Recipe, *, overwrite: bool = False) -> RunResult: ...


# What a stage that does not say otherwise declares (named, not lambdas: a default is then one object a test can find).
def no_reference(recipe: Recipe) -> ReferencePlan:
    return NO_REFERENCE


def no_sampling(recipe: Recipe) -> SamplingPlan | None:
    return None


def available() -> str | None:
    return None


def one_sequence(recipe: Recipe) -> int:
    return 1


def no_trainer_fields(recipe: Recipe) -> dict[str, Any]:
    return {}


def max_length_of(config: TrainingArguments) -> int | None:
    """TRL's vision collators cut each image row to the config's max_length, its prompt included."""
    return getattr(config, "max_length", None)


def nothing_to_settle(recipe: Recipe, run: PlannedRun) -> list[Default]:
    return []


def no_reference_cache(recipe: Recipe, data: dict, precision: str) -> RefLogpCache | None:
    return None


@dataclass(frozen=True, kw_only=True)
class Stage:
    """What every stage declares, training or data-making: the data it reads, the models it holds, what it cannot
    take. run.py, models.py, memory.py, the pipeline runner and the recipe loader ask this object; none names a stage.

    Never made directly: a stage is a TrainingStage (a TRL trainer) or a DataStage (``pairs``: writes data, trains
    nothing). Code that needs a training fact branches once on the kind (``trains``, or isinstance to narrow the
    type) instead of reading a training field off a stage that has none.
    """

    trains: ClassVar[bool]  # isinstance(stage, TrainingStage), for code that only says which kind it is

    name: str
    data_kind: str  # what data.load_training_data builds: preference, kto, prompt, prompt-one-image or sft
    data_expects: str  # said beside a row the stage cannot use
    # why this stage cannot take a vision-language model or rows with images (said at --dry-run and load, exit 2);
    # None: it can (TRL's trainer takes the processor and an images column). Every stage says.
    no_images: Callable[[], str | None]
    reference: Callable[[Recipe], ReferencePlan] = no_reference  # where reference log-probs come from (dry-run)
    uses_reward: bool = False  # reads the recipe's reward: section
    sampling: Callable[[Recipe], SamplingPlan | None] = no_sampling  # generation buffers, for the memory plan
    validate: Callable[[Recipe, ErrorAt], None] | None = None  # stage rules beyond the schema, raised with a line
    unavailable: Callable[[], str | None] = available  # why the installed libraries cannot run it

    def __post_init__(self) -> None:
        if type(self) is Stage:
            raise TypeError(f"stage {self.name}: make a TrainingStage or a DataStage, not the common Stage")

    @contextlib.contextmanager
    def reading(self, recipe: Recipe) -> Iterator[None]:
        """Around reading the recipe's data: a row this stage cannot use is said beside what the stage reads."""
        try:
            yield
        except DataError as exc:
            if exc.line is None:  # not about a row's shape (a missing file, an empty filter result)
                raise
            raise DataError(f"stage {recipe.stage} reads {self.data_expects}; {exc.reason}", file=exc.file,
                            line=exc.line, field=exc.field) from None

    def load_data(self, recipe: Recipe):
        """(train, eval or None, what run.json records) as this stage reads them. Under several processes the
        main process of each machine prepares the rows while the others wait, then they map its files; the notes
        on dropped rows are said once, by the main process."""
        from accelerate import PartialState

        state = PartialState()
        with self.reading(recipe), state.local_main_process_first():
            return load_splits(recipe.data, recipe.seed, self.data_kind, quiet=not state.is_main_process)

    def check_data(self, recipe: Recipe, visit=None) -> dict:
        """Every row read and checked as training will (streaming, no dataset built): what --dry-run reports.
        ``visit`` sees every training row (load.check_data)."""
        with self.reading(recipe):
            return check_data(recipe.data, self.data_kind, visit)


@dataclass(frozen=True, kw_only=True)
class TrainingStage(Stage):
    """A stage that trains: its TRL config and trainer, and what the run, the memory plan and the recipe check ask
    of a trainer (sequences per row, held-out evaluation, the policy's head, reference, loop, run defaults)."""

    trains: ClassVar[bool] = True

    # the TRL config dataclass as "module:Class": the recipe check reads its fields without importing TRL
    config: str
    build_trainer: Callable[[StageInputs], Trainer]  # the TRL trainer call
    # sequences each training row puts through the model at once (chosen and rejected: 2), for the memory plan
    sequences_per_row: Callable[[Recipe], int] = one_sequence
    evaluation: Literal["preference", "reward"] | None = None  # held-out figures before and after training
    policy: Literal["causal-lm", "sequence-classifier"] = "causal-lm"  # how the policy loads; also its LoRA task
    uses_ref_model: bool = False  # reads the recipe's ref_model: section
    resumable: bool = True  # the trainer resumes from its checkpoints
    # the trainer runs transformers' loop: it calls training_step (the NaN watchdog sees each loss) and honours
    # should_training_stop (a signal or early stopping ends the run at a step boundary with a checkpoint)
    step_loop: bool = True
    trainer_fields: Callable[[Recipe], dict[str, Any]] = no_trainer_fields  # config fields set from our sections
    # keys the recipe left to dpo-cli that depend on the run (device, data, cache): a precomputed reference, Liger
    settle: Callable[[Recipe, PlannedRun], list[Default]] = nothing_to_settle
    # the on-disk cache of reference log-probs that a run reads and fills (a precomputed reference, cached), or None:
    # (recipe, run.json's data record, precision) -> RefLogpCache; the run passes it to build_trainer as ref_cache
    reference_cache: Callable[[Recipe, dict, str], RefLogpCache | None] = no_reference_cache
    # the tokens an image row's prompt must fit in before TRL cuts image tokens out of it (the model's forward then
    # fails), from the stage's TRL config; None where TRL never cuts a prompt with images
    image_prompt_limit: Callable[[TrainingArguments], int | None] = max_length_of

    def config_class(self) -> type:
        """The TRL config dataclass (imports TRL, which is heavy)."""
        return import_config(self.config)

    @property
    def peft_task(self) -> str:
        return "SEQ_CLS" if self.policy == "sequence-classifier" else "CAUSAL_LM"


@dataclass(frozen=True, kw_only=True)
class DataStage(Stage):
    """A stage that makes data and trains nothing (``pairs``): no TRL config, trainer, checkpoints or --resume. Its
    own flow replaces the seven training steps, inside the same run lifecycle (train/manifest.py's open_run)."""

    trains: ClassVar[bool] = False

    make_data: MakesData
