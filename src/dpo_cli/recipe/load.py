"""Loading a stage recipe: YAML, overrides, the schema, the trainer: section, then cross-section and stage rules."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dpo_cli.core import console
from dpo_cli.core.errors import RecipeError, did_you_mean
from dpo_cli.core.redact import remember
from dpo_cli.recipe.schema import SOURCE_TAGS, Recipe, RefModelSection
from dpo_cli.recipe.trainer_fields import validate_trainer
from dpo_cli.recipe.yamlfile import ErrorAt, Located, apply_overrides, load_yaml
from dpo_cli.train.config import build_config
from dpo_cli.train.device import plan_device
from dpo_cli.train.models import check_lora_targets
from dpo_cli.train.stages import STAGES, get_stage, stage_names
from dpo_cli.train.stages.base import Stage
from dpo_cli.train.trl_compat import ignored_field


def _describe(err: dict, model: type[BaseModel] | None, located: Located, loc: tuple,
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


def _first_error(exc: ValidationError, model: type[BaseModel], located: Located,
                 prefix: tuple = ()) -> RecipeError:
    err = exc.errors()[0]
    # pydantic places a model_validator's error on the section itself
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function-") and p not in SOURCE_TAGS)
    if err["type"] == "value_error":
        return located.error(prefix + loc, str(err["ctx"]["error"]) if "ctx" in err else err["msg"])
    return _describe(err, model, located, loc, prefix)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply overrides and validate every section, the trainer section against TRL."""
    path = Path(path)
    data, root = load_yaml(path)
    origin = apply_overrides(data, overrides)
    remember(data)  # secrets it holds are scrubbed from every message and file from here on, errors included
    located = Located(path, root, origin)
    if "stages" in data:
        raise located.error(("stages",), "this file is a pipeline (it has stages:); run it with dpo-cli train")
    data.setdefault("output_dir", str(Path("runs") / path.stem))
    return build_recipe(data, located)


def build_recipe(data: dict, located: Located, prefix: tuple = ()) -> Recipe:
    """Validate one stage recipe's data; ``prefix`` locates it inside a pipeline file (``("stages", 2)``)."""

    def error(path: Sequence[Any], message: str) -> RecipeError:
        return located.error(prefix + tuple(path), message)

    name = data.get("stage")
    if isinstance(name, str) and name not in stage_names():
        raise error(("stage",), f"unknown stage '{name}'{did_you_mean(name, stage_names())}")
    if isinstance(name, str) and (reason := get_stage(name).unavailable()):
        raise error(("stage",), reason)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, Recipe, located, prefix) from None
    stage = get_stage(recipe.stage)
    if stage.trains:
        recipe.trainer = validate_trainer(stage.config_class(), recipe.trainer, error)
        warn_ignored_options(recipe, stage, error)
    check_conflicts(recipe, stage, error)
    if recipe.lora is not None:
        check_lora_targets(recipe, error)
    if stage.validate is not None:
        stage.validate(recipe, error)
    if stage.trains:
        build_config(recipe, plan_device(recipe.trainer), error)  # TRL's own cross-field checks, now, not later
    return recipe


def warn_ignored_options(recipe: Recipe, stage: Stage, error: ErrorAt) -> None:
    """A trainer: option turned on that the installed TRL's trainer for this stage ignores (DPO's padding_free): the
    run would go on as if it were off, so say so now, where the key is."""
    config_class = stage.config_class()
    for key, value in recipe.trainer.items():
        if value is True and (why := ignored_field(config_class, key)):
            import trl

            console.warn(str(error(("trainer", key), f"TRL {trl.__version__} ignores it for stage {recipe.stage}: "
                                                     f"{why} The run goes on as if it were false.")))


def check_conflicts(recipe: Recipe, stage: Stage, error: ErrorAt) -> None:
    """Cross-section rules; each names the key at fault."""
    if not stage.trains:
        _check_data_stage(recipe, stage, error)
    elif recipe.sampling is not None:
        makers = ", ".join(s.name for s in STAGES.values() if not s.trains)
        raise error(("sampling",), f"stage {recipe.stage} does not use a sampling: section ({makers} does); a "
                                   "trainer's own generation settings go under trainer:")
    if recipe.quantization is not None and recipe.lora is None and stage.trains:
        raise error(("quantization",), "a quantized model cannot be trained directly: add a lora: section (QLoRA), "
                                       "or quantize only the reference with ref_model.quantization")
    if recipe.ref_model.adapter and not recipe.ref_model.name_or_path:
        raise error(("ref_model", "adapter"), "an adapter needs its base model: set ref_model.name_or_path to the "
                                              "model the adapter was trained on")
    if recipe.early_stopping is not None and not stage.step_loop:
        raise error(("early_stopping",), f"stage {recipe.stage} cannot stop early: TRL's {recipe.stage.upper()} "
                                         "trainer runs its own loop, which ignores a request to stop")
    if recipe.reward is not None and not stage.uses_reward:
        users = ", ".join(s.name for s in STAGES.values() if s.uses_reward)
        raise error(("reward",), f"stage {recipe.stage} does not use a reward: section ({users} do)")
    if recipe.eval is not None and not (stage.trains and stage.policy == "causal-lm"):
        raise error(("eval", "judge"), f"stage {recipe.stage} makes no language model to judge: eval.judge judges the "
                                       "answers of a trained policy (dpo, orpo, sft, ppo, ...)")
    if recipe.ref_model != RefModelSection() and not stage.uses_ref_model:
        users = ", ".join(s.name for s in STAGES.values() if s.uses_ref_model)
        raise error(("ref_model",), f"stage {recipe.stage} does not use a ref_model: section ({users} do); its "
                                    f"reference is {stage.reference(recipe).description}")


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
