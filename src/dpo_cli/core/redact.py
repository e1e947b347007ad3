"""Keep secrets out of everything dpo-cli writes or prints: values under secret-looking keys, wherever they reappear."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

REDACTED = "<redacted>"
# Words that make a key name a secret once the name is split into words (hub_token, apiKey, DB_PASS,
# SERVICE_CREDENTIALS, X-Auth-Token); whole words only, so max_new_tokens, tokenizer and author are not secrets.
SECRET_WORDS = {"token", "key", "apikey", "password", "passwd", "pass", "pwd", "secret", "credential", "credentials",
                "auth", "private", "cookie", "session"}
# Tokenizer settings named like secrets: their values are special tokens a later command must read back.
NOT_SECRET = {f"{name}_token" for name in ("pad", "eos", "bos", "unk", "sep", "cls", "mask")}
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "WANDB_API_KEY",
              "COMET_API_KEY", "NEPTUNE_API_TOKEN", "OPENAI_API_KEY")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_MIN_LENGTH = 4  # shorter values ("no", "1") are too common to scrub from text
_remembered: set[str] = set()


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str) or key.lower() in NOT_SECRET:
        return False
    return any(word.lower() in SECRET_WORDS for word in _WORD.findall(key))


def _under_secret_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if is_secret_key(key) and isinstance(item, (str, int)) and not isinstance(item, bool):
                yield str(item)  # a number given where a string was due is still the secret (env.MY_TOKEN=1234...)
            else:
                yield from _under_secret_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _under_secret_keys(item)


def remember(value: Any) -> None:
    """Note every string under a secret key in ``value`` (a recipe, overrides), to scrub it wherever it reappears."""
    _remembered.update(s for s in _under_secret_keys(value) if len(s) >= _MIN_LENGTH)


def _known(value: Any) -> list[str]:
    known = {v for name in SECRET_ENV if len(v := os.environ.get(name, "")) >= _MIN_LENGTH}
    known |= _remembered | {s for s in _under_secret_keys(value) if len(s) >= _MIN_LENGTH}
    return sorted(known, key=len, reverse=True)  # a longer secret first, should one contain another


def redact_text(text: str, known: list[str] | None = None) -> str:
    for secret in _known(None) if known is None else known:
        text = text.replace(secret, REDACTED)
    return text


def redact(value: Any, _known_values: list[str] | None = None) -> Any:
    """A copy of ``value``: strings under secret-looking keys replaced, and every known secret scrubbed from the
    other strings (a hub_token reused in run_name, an API key in a URL)."""
    known = _known(value) if _known_values is None else _known_values
    if isinstance(value, dict):
        # a secret is a string: numbers under a secret-looking key (kl_per_token) are left alone
        return {k: REDACTED if is_secret_key(k) and isinstance(v, str) and v else redact(v, known)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, known) for v in value)
    if isinstance(value, str):
        return redact_text(value, known)
    return value
