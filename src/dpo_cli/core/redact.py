"""Keep secrets out of everything a run writes: values of secret-looking keys and of known secret variables."""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "<redacted>"
# a key that names a secret: hub_token, api_key, WANDB_API_KEY, password (not max_new_tokens or tokenizer)
SECRET_KEY = re.compile(r"(^|[_-])(token|key|password|passwd|secret)$", re.IGNORECASE)
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "WANDB_API_KEY",
              "COMET_API_KEY", "NEPTUNE_API_TOKEN", "OPENAI_API_KEY")


def _secret_values() -> list[str]:
    return [v for name in SECRET_ENV if len(v := os.environ.get(name, "")) >= 4]


def redact(value: Any, _values: list[str] | None = None) -> Any:
    """A copy of ``value`` with secret-looking keys' values and any known secret string replaced."""
    values = _secret_values() if _values is None else _values
    if isinstance(value, dict):
        # a secret is a string: numbers under a secret-looking key (kl_per_token) are left alone
        return {k: REDACTED if isinstance(k, str) and SECRET_KEY.search(k) and isinstance(value[k], str)
                and value[k] else redact(value[k], values) for k in value}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, values) for v in value)
    if isinstance(value, str):
        for secret in values:
            value = value.replace(secret, REDACTED)
    return value
