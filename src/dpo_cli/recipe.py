"""Recipe schema, YAML loading with line numbers, dotted command-line overrides and did-you-mean errors."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag,
                      ValidationError, ValidationInfo, field_validator, model_validator)
from typing_extensions import NotRequired, TypedDict

from .errors import RecipeError, did_you_mean


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-6`` as a float (YAML 1.1 wants ``5.0e-6``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """Parse one override value the way the recipe's YAML would read it."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


PathList = Annotated[list[str], BeforeValidator(_as_list)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name_or_path: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    tokenizer: str | None = None
    chat_template: str | None = Field(default=None, description="a Jinja template, or a path to a file holding one")


def _known_format(name: str) -> str:
    from .data.formats import FORMATS

    if name not in FORMATS:
        raise ValueError(f"unknown data format '{name}'{did_you_mean(name, FORMATS)}")
    return name


def _valid_where(text: str) -> str:
    from .data.where import compile_where
    from .errors import DataError

    try:
        compile_where(text)
    except DataError as exc:
        raise ValueError(str(exc)) from None
    return text


class DataSource(TypedDict):
    """A data source given as an object; stays a plain dict so run.json can record it as written."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    path: str
    format: NotRequired[Annotated[str, AfterValidator(_known_format)]]
    columns: NotRequired[dict[str, str]]  # canonical name -> column in the file
    where: NotRequired[Annotated[str, AfterValidator(_valid_where)]]
    limit: NotRequired[Annotated[int, Field(gt=0)]]


# pydantic puts a tagged union's tag into error locations; these are dropped again when naming the recipe key
_SOURCE_TAGS = ("path-string", "source-object")
SourceItem = Annotated[
    Annotated[str, Tag(_SOURCE_TAGS[0])] | Annotated[DataSource, Tag(_SOURCE_TAGS[1])],
    Discriminator(lambda v: _SOURCE_TAGS[0] if isinstance(v, str) else _SOURCE_TAGS[1]),
]


def _as_source_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, dict)) else value


SourceList = Annotated[list[SourceItem], BeforeValidator(_as_source_list)]


class DataSection(_Section):
    """Each of train/eval is a path, an object {path, format, columns, where, limit}, or a list of either."""

    train: SourceList
    eval: SourceList | None = None
    eval_split: float | None = Field(default=None, gt=0.0, lt=1.0)

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
    """What scores a policy's samples: reward functions (grpo) or a reward model and value model (ppo)."""

    functions: list[str | dict[str, Any]] = Field(
        default_factory=list, description="grpo: built-in names (length, regex, contains_answer, reward_model) with "
        "options as {name: {...}}, or user functions module:function / path/to/file.py:function")
    weights: list[float] | None = Field(default=None, description="grpo: one weight per function (default 1 each)")
    model: str | None = Field(default=None, description="ppo: the reward model, e.g. the output_dir of a reward stage")
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

    @model_validator(mode="after")
    def _four_bit_options(self) -> QuantizationSection:
        given = self.model_fields_set & {"quant_type", "double_quant", "compute_dtype"}
        if self.bits == 8 and given:
            raise ValueError(f"{', '.join(sorted(given))} only applies to bits: 4")
        return self


def _auto_ref(value: Any) -> Any:
    # `ref_model: auto` (or an empty `ref_model:`) is the default strategy
    return {} if value is None or value == "auto" else value


class RefModelSection(_Section):
    """Which reference model DPO compares against; empty means auto (shared adapter-disabled policy or a copy)."""

    name_or_path: str | None = None
    adapter: str | None = None
    quantization: QuantizationSection | None = None
    precompute: bool = False
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
    seed: int = 42
    # environment variables set for the run (WANDB_PROJECT, WANDB_API_KEY, ...); secret ones never reach a file
    env: dict[str, str] = Field(default_factory=dict)
    plot: bool = True
    watchdog: bool = True
    early_stopping: EarlyStoppingSection | None = None
    reward: RewardSection | None = None

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

    def to_yaml(self) -> str:
        return yaml_dump(self.model_dump(mode="json"))


def yaml_dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# Keys of the TRL config that the recipe owns at the top level: setting them under `trainer:` would be ambiguous.
OWNED_TRAINER_KEYS = {
    "output_dir": "set output_dir at the top level of the recipe",
    "seed": "set seed at the top level of the recipe",
    "model_init_kwargs": "use the model: section (dtype, trust_remote_code)",
    "trust_remote_code": "use model.trust_remote_code",
}


class _Located:
    """The YAML node tree of a recipe, to turn a key path back into a line number."""

    def __init__(self, file: Path, root: yaml.Node | None, overrides: dict[tuple, str]):
        self.file, self.root, self.overrides = file, root, overrides

    def line(self, path: Sequence[Any]) -> int | None:
        node, line = self.root, None
        for key in path:
            if isinstance(node, yaml.MappingNode):
                match = next((v for k, v in node.value if k.value == key), None)
                if match is None:
                    # an unknown key: point at the key itself
                    key_node = next((k for k, _ in node.value if k.value == key), None)
                    return key_node.start_mark.line + 1 if key_node else line
                line = next(k for k, _ in node.value if k.value == key).start_mark.line + 1
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, path: Sequence[Any], message: str) -> RecipeError:
        dotted = ".".join(str(p) for p in path)
        for prefix_len in range(len(path), 0, -1):
            override = self.overrides.get(tuple(path[:prefix_len]))
            if override is not None:
                return RecipeError(message, file=f"command-line override '{override}'", field=dotted or None)
        return RecipeError(message, file=self.file, line=self.line(path), field=dotted or None)


def _load_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if mark is not None:
            raise RecipeError(f"YAML syntax error at column {mark.column + 1}: {problem}",
                              file=path, line=mark.line + 1) from None
        raise RecipeError(f"YAML syntax error: {problem}", file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of sections (stage:, model:, data:, trainer:, ...)", file=path,
                          line=1)
    return data, node


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict[tuple, str]:
    """Set each ``a.b.c=value`` into ``data`` in place; return which key path came from which override."""
    origin: dict[tuple, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = tuple(key.strip().split("."))
        if not sep or not all(parts):
            raise RecipeError(f"override '{item}' is not of the form section.key=value (e.g. trainer.beta=0.2)")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(f"override '{item}': '{'.'.join(parts[:i + 1])}' is not a section")
            node = child
        node[parts[-1]] = parse_scalar(raw)
        origin[parts] = item
    return origin


def _describe(err: dict, model: type[BaseModel] | None, located: _Located, loc: tuple,
              prefix: tuple = ()) -> RecipeError:
    kind = err["type"]
    if kind == "extra_forbidden":
        choices = _fields_at(model, loc[:-1]) if model else []
        return located.error(prefix + loc, f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), choices)}")
    if kind == "missing":
        return located.error(prefix + loc, "required key is missing")
    value = err.get("input")
    return located.error(prefix + loc, f"{err['msg'].rstrip('.')} (got {value!r})")


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """Names of the fields of the (nested) pydantic model at ``path``."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        # an optional section (Section | None): its fields are the section's
        annotation = next((a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)),
                          annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _first_error(exc: ValidationError, model: type[BaseModel], located: _Located,
                 prefix: tuple = ()) -> RecipeError:
    err = exc.errors()[0]
    # pydantic places a model_validator's error on the section itself
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function-") and p not in _SOURCE_TAGS)
    if err["type"] == "value_error":
        return located.error(prefix + loc, str(err["ctx"]["error"]) if "ctx" in err else err["msg"])
    return _describe(err, model, located, loc, prefix)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply overrides and validate every section, the trainer section against TRL."""
    path = Path(path)
    data, root = _load_yaml(path)
    origin = apply_overrides(data, overrides)
    located = _Located(path, root, origin)
    if "stages" in data:
        raise located.error(("stages",), "this file is a pipeline (it has stages:); run it with dpo-cli train")
    data.setdefault("output_dir", str(Path("runs") / path.stem))
    return build_recipe(data, located)


def build_recipe(data: dict, located: _Located, prefix: tuple = ()) -> Recipe:
    """Validate one stage recipe's data; ``prefix`` locates it inside a pipeline file (``("stages", 2)``)."""
    from .stages import get_stage, stage_names, unavailable

    def error(path: Sequence[Any], message: str) -> RecipeError:
        return located.error(prefix + tuple(path), message)

    stage = data.get("stage")
    if isinstance(stage, str) and stage not in stage_names():
        raise error(("stage",), f"unknown stage '{stage}'{did_you_mean(stage, stage_names())}")
    if isinstance(stage, str) and (reason := unavailable(stage)):
        raise error(("stage",), reason)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, Recipe, located, prefix) from None
    recipe.trainer = validate_trainer(recipe.stage, recipe.trainer, error)
    check_conflicts(recipe, error)
    if recipe.lora is not None:
        from .models import check_lora_targets

        check_lora_targets(recipe, error)
    module = get_stage(recipe.stage)
    if recipe.reward is not None and not getattr(module, "USES_REWARD", False):
        raise error(("reward",), f"stage {recipe.stage} does not use a reward: section (grpo and ppo do)")
    check = getattr(module, "validate_recipe", None)
    if check is not None:
        check(recipe, error)
    return recipe


def precompute_enabled(recipe: Recipe) -> bool:
    """Reference log-probs computed once before training, from ref_model.precompute or TRL's own key."""
    return bool(recipe.ref_model.precompute or recipe.trainer.get("precompute_ref_log_probs"))


def check_conflicts(recipe: Recipe, error: Callable[[Sequence[Any], str], RecipeError]) -> None:
    """Cross-section rules about models; each names the key at fault."""
    if recipe.quantization is not None and recipe.lora is None:
        raise error(("quantization",), "a quantized model cannot be trained directly: add a lora: section (QLoRA), "
                                       "or quantize only the reference with ref_model.quantization")
    if recipe.ref_model.adapter and not recipe.ref_model.name_or_path:
        raise error(("ref_model", "adapter"), "an adapter needs its base model: set ref_model.name_or_path to the "
                                              "model the adapter was trained on")
    if recipe.ref_model.precompute and recipe.trainer.get("precompute_ref_log_probs") is False:
        raise error(("trainer", "precompute_ref_log_probs"),
                    "contradicts ref_model.precompute: true; remove one of them")
    if recipe.trainer.get("sync_ref_model"):
        if precompute_enabled(recipe):
            where = ("ref_model", "precompute") if recipe.ref_model.precompute else ("trainer", "precompute_ref_log_probs")
            raise error(where, "precomputed reference log-probs assume a fixed reference, but trainer.sync_ref_model "
                               "updates it during training; use one or the other")
        if recipe.lora is not None and not recipe.ref_model.explicit:
            raise error(("trainer", "sync_ref_model"),
                        "with lora: the reference is the policy with its adapter disabled, so there is no separate "
                        "reference to synchronise; set ref_model.name_or_path for a separate one, or drop sync_ref_model")


def validate_trainer(stage: str, trainer: dict[str, Any],
                     error: Callable[[Sequence[Any], str], RecipeError]) -> dict[str, Any]:
    """Check ``trainer:`` against the fields of the stage's TRL config; return the values coerced to their types."""
    from .stages import get_stage

    schema = trainer_schema(get_stage(stage).config_class())
    for key in trainer:
        if key in OWNED_TRAINER_KEYS:
            raise error(("trainer", key), f"'{key}' is not a trainer key here: {OWNED_TRAINER_KEYS[key]}")
        if key not in schema.model_fields:
            config_name = get_stage(stage).config_class().__name__
            raise error(("trainer", key), f"{config_name} has no field '{key}'{did_you_mean(key, schema.model_fields)}")
    try:
        checked = schema.model_validate(trainer)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ("trainer",) + tuple(err["loc"][:1])
        raise error(loc, f"{err['msg'].rstrip('.')} (got {err.get('input')!r})") from None
    # Keep the recipe's own values (TRL takes 10 for a float field, or one string for a list); only strings that
    # pydantic read as numbers or booleans are replaced, so "5e-6" given as a string still reaches TRL as a float.
    return {key: getattr(checked, key) if isinstance(value, str) else value for key, value in trainer.items()}


_SCHEMAS: dict[type, type[BaseModel]] = {}


def trainer_schema(config_class: type) -> type[BaseModel]:
    """A pydantic model with one optional field per dataclass field of a TRL config, typed as TRL types it."""
    if config_class not in _SCHEMAS:
        import dataclasses
        import typing

        from pydantic import TypeAdapter, create_model

        hints = typing.get_type_hints(config_class)
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(config_class):
            if not f.init:
                continue
            annotation = hints.get(f.name, Any)
            try:
                TypeAdapter(annotation)
            except Exception:  # a type pydantic cannot check (a callable, a torch type): accept as given
                annotation = Any
            if typing.get_origin(annotation) is list:  # TRL itself accepts one string for a list of strings
                annotation = Annotated[annotation, BeforeValidator(_as_list)]
            fields[f.name] = (annotation | None, None)
        _SCHEMAS[config_class] = create_model(
            f"{config_class.__name__}Fields",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )
    return _SCHEMAS[config_class]
