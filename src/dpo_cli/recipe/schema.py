"""The recipe's own sections as a strict pydantic schema (extra keys forbidden); trainer: is checked elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import NotRequired, TypedDict

from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.core.redact import redact
from dpo_cli.data.formats import FORMATS
from dpo_cli.data.where import compile_where
from dpo_cli.recipe.yamlfile import yaml_dump


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _chat_template(value: str | None) -> str | None:
    """A path to a template file, or the Jinja text itself; a path that is not there, or Jinja that does not parse,
    is refused now rather than used as a template."""
    if value is None or Path(value).is_file():
        return value
    if "{{" not in value and "{%" not in value and ("/" in value or value.endswith((".jinja", ".j2", ".txt"))):
        raise ValueError(f"{value!r} looks like a file path, but there is no such file (looked in {Path.cwd()}); give "
                         f"a path to a template file, or the Jinja template itself")
    import jinja2

    try:
        jinja2.Environment().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"the Jinja template does not parse: {exc.message} (template line {exc.lineno})") from None
    return value


class ModelSection(_Section):
    name_or_path: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    tokenizer: str | None = None
    chat_template: Annotated[str | None, AfterValidator(_chat_template)] = Field(
        default=None, description="a Jinja template, or a path to a file holding one")


def _known_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"unknown data format '{name}'{did_you_mean(name, FORMATS)}")
    return name


def _valid_where(text: str) -> str:
    try:
        compile_where(text)
    except DataError as exc:
        raise ValueError(str(exc)) from None
    return text


class DataSource(TypedDict):
    """A data source given as an object; stays a plain dict so run.json can record it as written."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    path: NotRequired[str]
    registry: NotRequired[str]  # a LLaMA-Factory dataset_info.json, with name: the entry to read
    name: NotRequired[str]
    hub: NotRequired[str]  # a dataset on the Hugging Face Hub (ORG/NAME) or a local folder laid out like one
    config: NotRequired[str]  # with hub: the dataset's configuration (subset)
    split: NotRequired[str]  # with hub: default train
    revision: NotRequired[str]  # with hub: a branch, tag or commit
    data_files: NotRequired[str | list[str] | dict[str, str | list[str]]]  # with hub: as load_dataset takes them
    data_dir: NotRequired[str]  # with hub: a folder inside the repository
    format: NotRequired[Annotated[str, AfterValidator(_known_format)]]
    columns: NotRequired[dict[str, str]]  # canonical name -> column in the file (a dotted path for nesting)
    where: NotRequired[Annotated[str, AfterValidator(_valid_where)]]
    limit: NotRequired[Annotated[int, Field(gt=0)]]
    skip_invalid: NotRequired[bool]  # drop bad rows (counted in run.json) instead of stopping at the first
    rejects: NotRequired[str]  # with skip_invalid: write the bad rows and their reasons here
    pairs: NotRequired[str]  # ranked data: best-worst (default), all or threshold=X
    preference: NotRequired[Literal["better", "safer", "safe-only"]]  # PKU-SafeRLHF: which answer is chosen


_HUB_ONLY = ("config", "split", "revision", "data_files", "data_dir")


def _one_kind_of_source(source: DataSource) -> DataSource:
    if sum(k in source for k in ("path", "registry", "hub")) != 1:
        raise ValueError("a data source needs exactly one of path, registry (with name) or hub")
    if "hub" not in source and any(k in source for k in _HUB_ONLY):
        raise ValueError(f"{', '.join(k for k in _HUB_ONLY if k in source)} apply to hub sources only")
    if ("registry" in source) != ("name" in source):
        raise ValueError("registry and name go together: the dataset_info.json and the entry to read")
    if "registry" in source and ("format" in source or "columns" in source):
        raise ValueError("a registry source takes format and columns from its entry; give path to set them")
    if "rejects" in source and not source.get("skip_invalid"):
        raise ValueError("rejects only applies with skip_invalid: true (without it the first bad row stops)")
    return source


# pydantic puts a tagged union's tag into error locations; these are dropped again when naming the recipe key
SOURCE_TAGS = ("path-string", "source-object")
SourceItem = Annotated[
    Annotated[str, Tag(SOURCE_TAGS[0])]
    | Annotated[DataSource, AfterValidator(_one_kind_of_source), Tag(SOURCE_TAGS[1])],
    Discriminator(lambda v: SOURCE_TAGS[0] if isinstance(v, str) else SOURCE_TAGS[1]),
]


def _as_source_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, dict)) else value


SourceList = Annotated[list[SourceItem], BeforeValidator(_as_source_list)]


class DataSection(_Section):
    """Each of train/eval is a path (or hub:ORG/NAME[@SPLIT]), an object {path, format, columns, where, limit,
    skip_invalid, rejects, pairs, preference}, {registry, name, ...} or {hub, config, split, revision, data_files,
    data_dir, ...}, or a list of them. cache: canonical rows are written once as Arrow under cache_dir (default
    DPO_CLI_HOME/data) and memory-mapped, so a second run reads no source row and TRL's tokenization cache hits."""

    train: SourceList
    eval: SourceList | None = None
    eval_split: float | None = Field(default=None, gt=0.0, lt=1.0)
    cache: bool = Field(default=True, description="prepare the rows once into an Arrow cache and memory-map them")
    cache_dir: str | None = Field(default=None, description="where the prepared rows go (default DPO_CLI_HOME/data)")

    @model_validator(mode="after")
    def _one_eval_source(self) -> DataSection:
        if self.eval and self.eval_split:
            raise ValueError("give either data.eval or data.eval_split, not both")
        return self


class EarlyStoppingSection(_Section):
    metric: str = Field(description="an eval metric, with or without the eval_ prefix: loss, rewards/accuracies, ...")
    patience: int = Field(default=3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(default=0.0, ge=0.0, description="smallest change that counts as an improvement")
    mode: Literal["min", "max"] | None = Field(default=None, description="default: min for losses, else max")


class RewardSection(_Section):
    """What scores a policy's samples: reward functions (grpo, rloo, online-dpo, pairs) or a reward model (ppo,
    online-dpo, pairs), and PPO's value model."""

    functions: list[str | dict[str, Any]] = Field(
        default_factory=list, description="built-in names (length, regex, contains_answer, reward_model) with "
        "options as {name: {...}}, or user functions module:function / path/to/file.py:function")
    weights: list[float] | None = Field(default=None, description="one weight per function (default 1 each)")
    model: str | None = Field(default=None, description="ppo, online-dpo, pairs: the reward model, e.g. the "
                              "output_dir of a reward stage")
    value_model: str | None = Field(default=None, description="ppo: the value model's starting weights (default: the "
                                    "reward model)")

    @model_validator(mode="after")
    def _one_weight_per_function(self) -> RewardSection:
        if self.weights is not None and len(self.weights) != len(self.functions):
            raise ValueError(f"reward.weights has {len(self.weights)} entries for {len(self.functions)} reward "
                             "functions; give one weight per function")
        return self


class LoraSection(_Section):
    """peft LoraConfig fields; the reference is then the policy with its adapter disabled."""

    r: int = Field(default=16, gt=0)
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field(
        default="all-linear", description="'all-linear', module name suffixes, or one regular expression")
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    use_rslora: bool = False


class QuantizationSection(_Section):
    """bitsandbytes weight quantization through transformers (QLoRA when the policy is quantized)."""

    bits: Literal[4, 8]
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # peft's prepare_model_for_kbit_training casts every weight left unquantized (embeddings, LM head, norms) to
    # float32; that makes the activations float32 too, and QLoRA heavier than LoRA on small models. Off by default.
    upcast: bool = False

    @model_validator(mode="after")
    def _four_bit_options(self) -> QuantizationSection:
        given = self.model_fields_set & {"quant_type", "double_quant", "compute_dtype"}
        if self.bits == 8 and given:
            raise ValueError(f"{', '.join(sorted(given))} only applies to bits: 4")
        return self


class SamplingSection(_Section):
    """How a data-making stage samples completions from its model (dpo-cli's own keys: no TRL trainer runs)."""

    num_samples: int = Field(default=4, description="completions per prompt (k); the best and the worst make a pair")
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=64, gt=0)
    batch_size: int = Field(default=8, gt=0, description="prompts per generate call, each with num_samples sequences")
    engine: Literal["transformers", "vllm"] = Field(default="transformers", description="vllm only when installed")

    @field_validator("num_samples")
    @classmethod
    def _two_to_pair(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"sampling.num_samples is {value}: a pair needs at least 2 samples per prompt (the best "
                             "and the worst); use 4 to 8")
        return value


class EvalSection(_Section):
    """What the end of training judges beyond the held-out pairs: a judged win rate of the trained model's answers
    against its starting model (dpo-cli eval RUN --judge JUDGE does the same afterwards)."""

    judge: str = Field(description="a reward model (e.g. a reward stage's output_dir) or a causal LM judge")
    n: int = Field(default=100, gt=0, description="how many held-out prompts")
    max_new_tokens: int = Field(default=128, gt=0)
    sample: bool = Field(default=False, description="sample the answers; greedy decoding by default")
    temperature: float = Field(default=0.7, gt=0.0, description="with sample")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="with sample")
    seed: int = Field(default=0, ge=0, lt=2**32, description="with sample: prompt i is sampled with seed + i")
    template: str | None = Field(default=None, description="a judge LM's question: a file with {prompt}, "
                                 "{answer_a} and {answer_b} (default: the template dpo-cli ships)")
    prompts: str | None = Field(default=None, description="prompts file (default: the run's held-out data)")
    data: str | None = Field(default=None, description="a data file whose rows' prompts are used")
    against: str | None = Field(default=None, description="the model or run to beat (default: model.name_or_path)")
    also_against: list[str] = Field(default_factory=list, description="more models or runs to judge against on the "
                                    "same prompts, e.g. in a pipeline round the base: ${sft.output_dir}")

    @model_validator(mode="after")
    def _one_prompt_source(self) -> EvalSection:
        if self.prompts and self.data:
            raise ValueError("give either eval.prompts or eval.data, not both")
        return self


def _auto_ref(value: Any) -> Any:
    # `ref_model: auto` (or an empty `ref_model:`) is the default strategy
    return {} if value is None or value == "auto" else value


class RefModelSection(_Section):
    """Which reference model DPO compares against; empty means auto (shared adapter-disabled policy or a copy)."""

    name_or_path: str | None = None
    adapter: str | None = None
    quantization: QuantizationSection | None = None
    # auto: decided per run from the device and the planned steps (train/stages/dpo.py says how)
    precompute: bool | Literal["auto"] = "auto"
    cache: bool = True
    cache_dir: str | None = None

    @property
    def explicit(self) -> bool:
        """A reference loaded separately from the policy (another model, an adapter, or quantized)."""
        return bool(self.name_or_path or self.adapter or self.quantization)


class Recipe(_Section):
    stage: str
    model: ModelSection
    ref_model: Annotated[RefModelSection, BeforeValidator(_auto_ref)] = Field(default_factory=RefModelSection)
    lora: LoraSection | None = None
    quantization: QuantizationSection | None = None
    data: DataSection
    trainer: dict[str, Any] = Field(default_factory=dict)
    output_dir: str
    seed: int = Field(default=42, ge=0, lt=2**32)  # what numpy's and torch's generators accept
    # environment variables set for the run (WANDB_PROJECT, WANDB_API_KEY, ...); secret ones never reach a file
    env: dict[str, str] = Field(default_factory=dict)
    plot: bool = True
    watchdog: bool = True
    early_stopping: EarlyStoppingSection | None = None
    reward: RewardSection | None = None
    sampling: SamplingSection | None = None
    eval: EvalSection | None = None

    @field_validator("eval")
    @classmethod
    def _judge_needs_prompts(cls, value, info: ValidationInfo):
        data = info.data.get("data")
        if value is not None and not (value.prompts or value.data) and data is not None \
                and not (data.eval or data.eval_split):
            raise ValueError("eval.judge needs held-out prompts: set data.eval or data.eval_split, or eval.prompts "
                             "or eval.data")
        return value

    @field_validator("early_stopping")
    @classmethod
    def _early_stopping_needs_evaluation(cls, value, info: ValidationInfo):
        if value is None:
            return value
        data, trainer = info.data.get("data"), info.data.get("trainer")
        if data is not None and not (data.eval or data.eval_split):
            raise ValueError("early_stopping needs held-out pairs: set data.eval or data.eval_split")
        if trainer is not None and str(trainer.get("eval_strategy", "no")) == "no":
            raise ValueError("early_stopping needs evaluations during training: set trainer.eval_strategy: steps "
                             "(with trainer.eval_steps) or epoch")
        return value

    def local_inputs(self) -> list[Path]:
        """Every local file or directory the run reads: data sources (a glob by the folder it searches, a registry by
        its dataset_info.json), models,
        tokenizer, chat template, reference, adapter, reward models and reward-function files."""
        named = [s if isinstance(s, str) else s.get("path") or s.get("registry") or s.get("hub")
                 for s in [*self.data.train, *(self.data.eval or [])]]
        named += [self.model.name_or_path, self.model.tokenizer, self.model.chat_template,
                  self.ref_model.name_or_path, self.ref_model.adapter]
        if self.reward is not None:
            named += [self.reward.model, self.reward.value_model]
            named += [f.rpartition(":")[0] for f in self.reward.functions if isinstance(f, str) and ":" in f]
        if self.eval is not None:
            named += [self.eval.judge, self.eval.template, self.eval.prompts, self.eval.data, self.eval.against,
                      *self.eval.also_against]
        found = []
        for name in filter(None, named):
            path = Path(name)
            while any(c in path.name for c in "*?[") and path != path.parent:  # a glob: the folder it searches
                path = path.parent
            if path.exists():
                found.append(path)
        return found

    def rejects_files(self) -> list[tuple[tuple, str]]:
        """Where each data source's rejects: file is set (``("data", "train", 0, "rejects")``) and the file."""
        return [(("data", split, i, "rejects"), source["rejects"])
                for split, sources in (("train", self.data.train), ("eval", self.data.eval or []))
                for i, source in enumerate(sources) if isinstance(source, dict) and source.get("rejects")]

    def resolved_yaml(self) -> str:
        """The recipe as a run records it (recipe.resolved.yaml): every default filled in, secrets redacted."""
        return yaml_dump(redact(self.model_dump(mode="json")))
