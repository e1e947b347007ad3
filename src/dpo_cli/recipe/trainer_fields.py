"""The trainer: section, checked against the fields and types of the stage's TRL config dataclass."""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, create_model

from dpo_cli.core.errors import did_you_mean
from dpo_cli.recipe.trl_fields import ConfigFields, config_fields, from_class, import_config
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


def validate_trainer(config: str, trainer: dict[str, Any], error: ErrorAt) -> dict[str, Any]:
    """Check ``trainer:`` against the fields of the TRL config class ``config`` (``module:Class``); return the values
    coerced to their types. Reads the fields from the cache of the installed TRL, so a bad key is refused without
    importing TRL (recipe/trl_fields.py)."""
    fields = config_fields(config)
    for key in trainer:
        if key in OWNED_TRAINER_KEYS:
            raise error(("trainer", key), f"'{key}' is not a trainer key here: {OWNED_TRAINER_KEYS[key]}")
        if key not in fields.types:
            raise error(("trainer", key), f"{fields.name} has no field '{key}'{did_you_mean(key, fields.types)}")
    if fields.opaque & trainer.keys():  # a type only the class itself describes
        fields = from_class(import_config(config))
    schema = trainer_schema(fields)
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


@functools.cache
def trainer_schema(fields: ConfigFields) -> type[BaseModel]:
    """A pydantic model with one field per field of a TRL config, typed as TRL types it: a key may be left out, but
    null only where TRL takes None (``per_device_train_batch_size: null`` is refused here, not by TRL later)."""
    model_fields: dict[str, Any] = {}
    for name, annotation in fields.types.items():
        if typing.get_origin(annotation) is list:
            annotation = Annotated[annotation, BeforeValidator(_as_list)]
        model_fields[name] = (annotation, None)
    return create_model(f"{fields.name}Fields", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True,
                                                                     allow_inf_nan=False),
                        **model_fields)
