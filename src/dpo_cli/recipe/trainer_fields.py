"""The trainer: section, checked against the fields and types of the stage's TRL config dataclass."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError, create_model

from dpo_cli.core.errors import did_you_mean
from dpo_cli.recipe.yamlfile import ErrorAt


def _as_list(value: Any) -> Any:
    # one value where TRL types a field as a list: one string for a list of strings (loss_type), one number for
    # OnlineDPOConfig's per-epoch beta (TRL turns a list of one back into the number)
    return value if value is None or isinstance(value, (list, tuple, dict)) else [value]


# Keys of the TRL config that the recipe owns at the top level: setting them under `trainer:` would be ambiguous.
OWNED_TRAINER_KEYS = {
    "output_dir": "set output_dir at the top level of the recipe",
    "seed": "set seed at the top level of the recipe",
    "model_init_kwargs": "use the model: section (dtype, trust_remote_code)",
    "trust_remote_code": "use model.trust_remote_code",
}


# Counts that TRL's configs take as given and that fail (or hang) only once training starts when they are not positive.
POSITIVE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length",
            "max_prompt_length", "max_completion_length", "logging_steps", "save_steps", "eval_steps",
            "num_generations", "num_train_epochs", "max_new_tokens", "response_length")


def validate_trainer(config_class: type, trainer: dict[str, Any], error: ErrorAt) -> dict[str, Any]:
    """Check ``trainer:`` against the fields of a TRL config class; return the values coerced to their types."""
    schema = trainer_schema(config_class)
    for key in trainer:
        if key in OWNED_TRAINER_KEYS:
            raise error(("trainer", key), f"'{key}' is not a trainer key here: {OWNED_TRAINER_KEYS[key]}")
        if key not in schema.model_fields:
            raise error(("trainer", key), f"{config_class.__name__} has no field '{key}'"
                                          f"{did_you_mean(key, schema.model_fields)}")
    try:
        checked = schema.model_validate(trainer)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ("trainer",) + tuple(err["loc"][:1])
        raise error(loc, f"{err['msg'].rstrip('.')} (got {err.get('input')!r})") from None
    for key in POSITIVE:
        value = trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise error(("trainer", key), f"must be positive (got {value!r})")
    if isinstance(trainer.get("learning_rate"), (int, float)) and trainer["learning_rate"] < 0:
        raise error(("trainer", "learning_rate"), f"must not be negative (got {trainer['learning_rate']!r})")
    # Keep the recipe's own values (TRL takes 10 for a float field); only strings that pydantic read as numbers or
    # booleans are replaced, so "5e-6" given as a string still reaches TRL as a float, and one value given for a list
    # field reaches TRL as a list of one.
    return {key: getattr(checked, key) if isinstance(value, str) or _one_for_a_list(value, getattr(checked, key))
            else value for key, value in trainer.items()}


def _one_for_a_list(given: Any, checked: Any) -> bool:
    return isinstance(checked, list) and not isinstance(given, (list, tuple))


_SCHEMAS: dict[type, type[BaseModel]] = {}


def trainer_schema(config_class: type) -> type[BaseModel]:
    """A pydantic model with one optional field per dataclass field of a TRL config, typed as TRL types it."""
    if config_class not in _SCHEMAS:
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
            if typing.get_origin(annotation) is list:
                annotation = Annotated[annotation, BeforeValidator(_as_list)]
            fields[f.name] = (annotation | None, None)
        _SCHEMAS[config_class] = create_model(
            f"{config_class.__name__}Fields",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False),
            **fields,
        )
    return _SCHEMAS[config_class]
