"""Loading a stage recipe: YAML, overrides, the schema, the trainer: section, then cross-section and stage rules."""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dpo_cli.core import console
from dpo_cli.core.errors import InputError, RecipeError, did_you_mean
from dpo_cli.core.paths import check_output_file
from dpo_cli.core.redact import REDACTED, is_secret_key, remember
from dpo_cli.recipe.schema import SOURCE_TAGS, Recipe, RefModelSection
from dpo_cli.recipe.trainer_fields import validate_trainer
from dpo_cli.recipe.trl_fields import cached
from dpo_cli.recipe.yamlfile import ErrorAt, Located, apply_overrides, load_yaml
from dpo_cli.train.config import build_config
from dpo_cli.train.device import plan_device
from dpo_cli.train.models import check_lora_targets
from dpo_cli.train.stages import STAGES, get_stage, stage_names
from dpo_cli.train.stages.base import DataStage, Stage, TrainingStage
from dpo_cli.train.trl_compat import ignored_field


def _describe(err: dict, model: type[BaseModel] | None, located: Located, loc: tuple,
              prefix: tuple = ()) -> RecipeError:
    kind = err["type"]
    if kind == "extra_forbidden":
        choices = _fields_at(model, loc[:-1]) if model else []
        return located.error(prefix + loc, f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), choices)}")
    if kind == "missing":
        return located.error(prefix + loc, "required key is missing")
    # pydantic's error carries the value given: under a secret key (a number, a list) it is never echoed
    value = REDACTED if any(is_secret_key(part) for part in loc) else repr(err.get("input"))
    return located.error(prefix + loc, f"{err['msg'].rstrip('.')} (got {value})")


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


def _clean_loc(err: dict) -> tuple:
    # pydantic places a model_validator's error on the section itself
    return tuple(p for p in err["loc"] if not str(p).startswith("function-") and p not in SOURCE_TAGS)


def _first_error(exc: ValidationError, model: type[BaseModel], located: Located,
                 prefix: tuple = ()) -> RecipeError:
    errors = exc.errors()
    err = errors[0]
    # a required key "missing" beside an unknown key that resembles it (a typo, a look-alike letter): the unknown
    # key is the mistake to point at, with its line
    missing = {_clean_loc(e) for e in errors if e["type"] == "missing"}
    for e in errors:
        loc = _clean_loc(e)
        if e["type"] == "extra_forbidden" and difflib.get_close_matches(
                str(loc[-1]), [m[-1] for m in missing if m[:-1] == loc[:-1]], n=1, cutoff=0.6):
            err = e
            break
    loc = _clean_loc(err)
    if err["type"] == "value_error":
        return located.error(prefix + loc, str(err["ctx"]["error"]) if "ctx" in err else err["msg"])
    return _describe(err, model, located, loc, prefix)


# No recipe key lies deeper than a handful of sections (trainer.gradient_checkpointing_kwargs.use_reentrant is 3);
# an override far deeper is a mistake, and would build a structure too deep for the checks that walk it.
MAX_OVERRIDE_DEPTH = 32


def check_override_depth(overrides: Sequence[str]) -> None:
    for item in overrides:
        depth = item.partition("=")[0].count(".") + 1
        if depth > MAX_OVERRIDE_DEPTH:
            raise RecipeError(f"override '{item[:60]}...' names a key {depth} levels deep; recipe keys are at most a "
                              f"few levels deep (section.key, or NAME.section.key in a pipeline)")


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, trl: bool = True) -> Recipe:
    """Read a recipe file, apply overrides and validate every section, the trainer section against TRL's config
    fields; ``trl`` false (a dry run) leaves out TRL's own checks of its config, which import TRL (check_with_trl)."""
    path = Path(path)
    check_override_depth(overrides)
    data, root = load_yaml(path)
    origin = apply_overrides(data, overrides)
    remember(data)  # secrets it holds are scrubbed from every message and file from here on, errors included
    located = Located(path, root, origin)
    if "stages" in data:
        raise located.error(("stages",), "this file is a pipeline (it has stages:); run it with dpo-cli train")
    data.setdefault("output_dir", str(Path("runs") / path.stem))
    recipe = check_rules(check_keys(data, located), located)
    return check_with_trl(recipe, located) if trl else recipe


def _error_at(located: Located, prefix: tuple) -> ErrorAt:
    def error(path: Sequence[Any], message: str) -> RecipeError:
        return located.error(prefix + tuple(path), message)

    return error


def check_keys(data: dict, located: Located, prefix: tuple = ()) -> Recipe:
    """The checks that need no TRL, so a bad key is refused in a fraction of a second: the stage's name, every
    section's keys and types, and the trainer: section's (from the cache of TRL's config fields)."""
    error = _error_at(located, prefix)
    for key_path, value in _numbers_not_finite(data):
        raise error(key_path, f"must be a finite number (got {value})")
    name = data.get("stage")
    if isinstance(name, str) and name not in stage_names():
        raise error(("stage",), f"unknown stage '{name}'{did_you_mean(name, stage_names())}")
    # a config the cache holds imported under this TRL: the stage is there, and asking would import TRL
    named = get_stage(name) if isinstance(name, str) else None
    if named is not None and not (isinstance(named, TrainingStage) and cached(named.config)) \
            and (reason := named.unavailable()):
        raise error(("stage",), reason)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, Recipe, located, prefix) from None
    stage = get_stage(recipe.stage)
    if isinstance(stage, TrainingStage):
        recipe.trainer = validate_trainer(stage.config, recipe.trainer, error)
        # a string such as "nan" that the trainer's float field read as a number
        for key_path, value in _numbers_not_finite(recipe.trainer, ("trainer",)):
            raise error(key_path, f"must be a finite number (got {value})")
    return recipe


def check_rules(recipe: Recipe, located: Located, prefix: tuple = ()) -> Recipe:
    """The checks after check_keys that need no TRL: cross-section and stage rules, rejects files, LoRA targets."""
    error = _error_at(located, prefix)
    stage = get_stage(recipe.stage)
    check_conflicts(recipe, stage, error)
    check_rejects_files(recipe, located.file, error)
    if recipe.lora is not None:
        check_lora_targets(recipe, error)
    if stage.validate is not None:
        stage.validate(recipe, error)
    return recipe


def check_with_trl(recipe: Recipe, located: Located, prefix: tuple = ()) -> Recipe:
    """TRL's own verdict on a recipe's trainer: section, which imports TRL (5 to 15 s): options its trainer ignores
    (a warning) and its config's cross-field checks, each naming the key at fault. A run makes these before it loads
    data or weights, and before a launcher starts its processes; a dry run leaves them out."""
    stage = get_stage(recipe.stage)
    if isinstance(stage, TrainingStage):
        error = _error_at(located, prefix)
        warn_ignored_options(recipe, stage, error)
        build_config(recipe, plan_device(recipe.trainer), error)
    return recipe


def _numbers_not_finite(data: Any, path: tuple = ()) -> Iterator[tuple[tuple, float]]:
    """(key path, value) of every NaN or infinity in a recipe's values (an explicit stack: recipes can nest deep)."""
    stack = [(path, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            yield where, value
        elif isinstance(value, dict):
            stack.extend((where + (k,), v) for k, v in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend((where + (i,), v) for i, v in reversed(list(enumerate(value))))


def warn_ignored_options(recipe: Recipe, stage: TrainingStage, error: ErrorAt) -> None:
    """A trainer: option turned on that the installed TRL's trainer for this stage ignores (DPO's padding_free): the
    run would go on as if it were off, so say so now, where the key is."""
    config_class = stage.config_class()
    for key, value in recipe.trainer.items():
        if value is True and (why := ignored_field(config_class, key)):
            import trl

            console.warn(str(error(("trainer", key), f"TRL {trl.__version__} ignores it for stage {recipe.stage}: "
                                                     f"{why} The run goes on as if it were false.")))


def check_conflicts(recipe: Recipe, stage: Stage, error: ErrorAt) -> None:
    """Cross-section rules; each names the key at fault. A stage that makes data has no trainer, so the rules about
    one (early stopping, the policy judged, a ref_model: section) refuse the section for it."""
    training = stage if isinstance(stage, TrainingStage) else None
    if training is None:
        _check_data_stage(recipe, stage, error)
    elif recipe.sampling is not None:
        makers = ", ".join(s.name for s in STAGES.values() if isinstance(s, DataStage))
        raise error(("sampling",), f"stage {recipe.stage} does not use a sampling: section ({makers} does); a "
                                   "trainer's own generation settings go under trainer:")
    if recipe.quantization is not None and recipe.lora is None and training is not None:
        raise error(("quantization",), "a quantized model cannot be trained directly: add a lora: section (QLoRA), "
                                       "or quantize only the reference with ref_model.quantization")
    if recipe.ref_model.adapter and not recipe.ref_model.name_or_path:
        raise error(("ref_model", "adapter"), "an adapter needs its base model: set ref_model.name_or_path to the "
                                              "model the adapter was trained on")
    if recipe.early_stopping is not None and training is not None and not training.step_loop:
        raise error(("early_stopping",), f"stage {recipe.stage} cannot stop early: TRL's {recipe.stage.upper()} "
                                         "trainer runs its own loop, which ignores a request to stop")
    if recipe.reward is not None and not stage.uses_reward:
        users = ", ".join(s.name for s in STAGES.values() if s.uses_reward)
        raise error(("reward",), f"stage {recipe.stage} does not use a reward: section ({users} do)")
    if recipe.eval is not None and not (training is not None and training.policy == "causal-lm"):
        raise error(("eval", "judge"), f"stage {recipe.stage} makes no language model to judge: eval.judge judges the "
                                       "answers of a trained policy (dpo, orpo, sft, ppo, ...)")
    if recipe.ref_model != RefModelSection() and not (training is not None and training.uses_ref_model):
        users = ", ".join(s.name for s in STAGES.values() if isinstance(s, TrainingStage) and s.uses_ref_model)
        raise error(("ref_model",), f"stage {recipe.stage} does not use a ref_model: section ({users} do); its "
                                    f"reference is {stage.reference(recipe).description}")


def check_rejects_files(recipe: Recipe, recipe_file: Path, error: ErrorAt) -> None:
    """A data source's rejects: file goes through the same check as every output, when the recipe is read (so a
    dry run refuses it too): never an input (the data, the recipe, a registry, a model), never inside a saved model
    other than this run's own output_dir, one file per source. Replacing an existing one is checked when the run
    starts (it needs --overwrite)."""
    reads = [*recipe.local_inputs(), *([recipe_file] if recipe_file.is_file() else [])]
    seen: dict[Path, str] = {}
    for where, rejects in recipe.rejects_files():
        dotted = ".".join(map(str, where))
        if (other := seen.get(Path(rejects).resolve())) is not None:
            raise error(where, f"{rejects} is also the rejects file of {other}; each source needs its own")
        seen[Path(rejects).resolve()] = dotted
        try:
            check_output_file(rejects, reads, what="rejects file", force=True, owned=recipe.output_dir)
        except InputError as exc:
            raise error(where, str(exc)) from None


def _check_data_stage(recipe: Recipe, stage: Stage, error: ErrorAt) -> None:
    """A stage that makes data trains nothing: no TRL config, no adapter, no early stopping."""
    if recipe.trainer:
        key = next(iter(recipe.trainer))
        raise error(("trainer", key), f"stage {stage.name} makes data and trains nothing, so it has no trainer: "
                                      "section; its settings go under sampling: (num_samples, temperature, "
                                      "max_new_tokens, batch_size)")
    if recipe.lora is not None:
        raise error(("lora",), f"stage {stage.name} trains nothing, so a lora: section has no use; to sample from a "
                               "LoRA run, give its output directory as model.name_or_path")
    if recipe.early_stopping is not None:
        raise error(("early_stopping",), f"stage {stage.name} trains nothing, so it cannot stop early")
