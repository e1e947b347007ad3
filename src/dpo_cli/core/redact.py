"""Keep secrets out of everything dpo-cli writes or prints: values under secret-looking keys, wherever they reappear."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

REDACTED = "<redacted>"
# A key name is split into words at _ - . and camelCase (hub_token -> hub, token; apiKey -> api, key), so whole words
# are matched: max_new_tokens, tokenizer, author, path and patience are not secrets. These words make a secret
# wherever they stand (DB_PASSWORD_2, SESSION_SECRET), also at the end of a longer word (PGPASSWORD, clientsecret):
STRONG_WORDS = {"password", "passwd", "passphrase", "secret", "credential", "credentials", "apikey", "pwd", "dsn",
                "authorization", "cookie"}
# These only as the last word (hub_token, X-Auth-Token, NGROK_AUTHTOKEN, GITHUB_PAT, DB_PASS, API_KEY, SECRETKEY),
# since elsewhere they name something else: mean_token_accuracy, hub_private_repo, token_file, session_id.
LAST_WORDS = {"token", "key", "pass", "auth", "pat", "session", "private"}
KEY_OWNERS = ("api", "secret", "access", "private", "auth", "client", "master", "signing", "encryption", "ssh",
              "license", "hub", "app", "service", "session")  # SECRETKEY and accesskey, not monkey
# the word before a last "token" or "key" that makes it a kind of token or a lookup key: kl_per_token, sort_key
NOT_CREDENTIAL_AFTER = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "per", "num", "max", "min", "special",
                        "image", "start", "end", "stop", "think", "tool", "sort", "cache", "column", "dataset",
                        "metric", "primary", "group", "lookup", "hash"}
# Tokenizer settings named like secrets: their values are special tokens a later command must read back.
NOT_SECRET = {f"{name}_token" for name in ("pad", "eos", "bos", "unk", "sep", "cls", "mask")}
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "WANDB_API_KEY",
              "COMET_API_KEY", "NEPTUNE_API_TOKEN", "OPENAI_API_KEY")
# the desktop's and the shell's own variables, whose values are common words (XDG_SESSION_TYPE=x11 is not a secret)
NOT_SECRET_ENV = ("PWD", "OLDPWD", "XDG_", "SSH_AUTH_SOCK", "DBUS_", "GPG_", "TERM_SESSION")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# The userinfo of a URL (scheme://user:password@host): a credential wherever it appears, in any key or message
# (also after a single slash: a URL read as a path, https:/user:pass@host, keeps its credential)
_USERINFO = re.compile(r"(?<=[A-Za-z0-9]:/)/?([^/\s@'\"<>]+)(?=@)")
_MIN_LENGTH = 4  # shorter values ("no", "1") are too common to scrub from text
# values a secret-named setting may hold that are no secret and too common to scrub (USE_AUTH=true)
_FLAGS = {"true", "false", "none", "null", "auto", "yes", "enabled", "disabled"}
_remembered: set[str] = set()


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str) or key.lower() in NOT_SECRET:
        return False
    words = [w.lower() for w in _WORD.findall(key) if not w.isdigit()]  # API_KEY_2 ends in KEY
    if any(w in STRONG_WORDS or w.endswith(tuple(STRONG_WORDS)) for w in words):
        return True
    if not words:
        return False
    last, before = words[-1], words[-2] if len(words) > 1 else ""
    credential = last in LAST_WORDS or last.endswith("token") or (last.endswith("key") and last[:-3] in KEY_OWNERS)
    return credential and before not in NOT_CREDENTIAL_AFTER


def _scalars(value: Any) -> Iterator[str]:
    """Every scalar inside a value given under a secret key: a number, a list or a map there is the secret too."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _scalars(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _scalars(item)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield str(value)


def _userinfo(text: str) -> Iterator[str]:
    """The userinfo of each URL in ``text``, and its password part alone (it may be printed without the URL)."""
    for found in _USERINFO.findall(text):
        yield found
        if ":" in found:
            yield found.partition(":")[2]


def _secrets_in(value: Any) -> Iterator[str]:
    """Every secret value in ``value``, walked without recursion (a recipe can nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if is_secret_key(key):
                    yield from _scalars(child)
                stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, str) and "@" in item:
            yield from _userinfo(item)


def _scrubbable(value: str) -> bool:
    return len(value) >= _MIN_LENGTH and value.lower() not in _FLAGS


def remember(value: Any) -> None:
    """Note every secret in ``value`` (a recipe, overrides): under a secret key, or a URL's userinfo, to scrub it
    wherever it reappears, messages and files alike."""
    _remembered.update(s for s in _secrets_in(value) if _scrubbable(s))


def _environment() -> set[str]:
    """Secret values of this process's environment: the known names, any other secret-looking name (PGPASSWORD,
    GITHUB_PAT), and URLs' userinfo."""
    found = set()
    for name, value in os.environ.items():
        if name in SECRET_ENV or (is_secret_key(name) and not name.startswith(NOT_SECRET_ENV)):
            found.add(value)
        elif "@" in value:
            found.update(_userinfo(value))
    return {v for v in found if _scrubbable(v)}


def _known(value: Any) -> list[str]:
    known = _environment() | _remembered | {s for s in _secrets_in(value) if _scrubbable(s)}
    return sorted(known, key=len, reverse=True)  # a longer secret first, should one contain another


def redact_text(text: str, known: list[str] | None = None) -> str:
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group(0)[:-len(m.group(1))] + REDACTED, text)
    for secret in _known(None) if known is None else known:
        text = text.replace(secret, REDACTED)
    return text


def redact(value: Any, _known_values: list[str] | None = None) -> Any:
    """A copy of ``value``: values under secret-looking keys replaced, and every known secret and URL userinfo
    scrubbed from the other strings (a hub_token reused in run_name, a password in a database URL)."""
    known = _known(value) if _known_values is None else _known_values
    if isinstance(value, dict):
        # a flag (hub_private_repo: true) or an empty value hides nothing
        return {k: REDACTED if is_secret_key(k) and v not in (None, "", [], {}) and not isinstance(v, bool)
                else redact(v, known) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, known) for v in value)
    if isinstance(value, str):
        return redact_text(value, known)
    return value
