"""The fields of TRL's config dataclasses, cached on disk per installed TRL, so a recipe is checked without TRL.

Importing a TRL config imports TRL, transformers and torch (5 to 15 s); a recipe's trainer: section needs only the
names and types of its fields, and a dry run's plan only their defaults and a few facts of TRL's trainers (trl_fact).
The first check under a given TRL (and transformers, whose TrainingArguments every TRL config extends) imports the
class and writes what it found to a JSON file keyed by both versions, which ``importlib.metadata`` reads without
importing either. A later check reads that file; a different install writes its own file.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Union

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.builtins import cache_home

# Bump when the way types are written below changes, so files of the older layout are not read.
LAYOUT = 2
_NAMED_TYPES = {"any": Any, "none": type(None), "bool": bool, "int": int, "float": float, "str": str, "dict": dict,
                "list": list, "tuple": tuple}


@dataclass(frozen=True, eq=False)  # compared by identity: the pydantic model built from it is kept per object
class ConfigFields:
    """A TRL config dataclass as the recipe check sees it: its name and, per init field in order, the type pydantic
    checks a value against (``Any`` where pydantic cannot check one) and its default as JSON writes it (an enum's
    value; a default JSON cannot write is left out)."""

    name: str
    types: dict[str, Any]
    defaults: dict[str, Any]
    # fields whose type is a class of TRL's or its dependencies' that the cache cannot describe (accelerate's
    # ParallelismConfig): a recipe that sets one is checked against the imported class instead
    opaque: frozenset[str] = frozenset()


class _Opaque(Exception):
    pass


def import_config(path: str) -> type:
    """The config class named ``module:Class`` (imports TRL)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def versions() -> dict[str, str]:
    """The installed TRL and transformers, read from their metadata (imports neither)."""
    return {name: metadata.version(name) for name in ("trl", "transformers")}


def cache_file() -> Path:
    found = versions()
    return cache_home() / "trl-fields" / f"trl-{found['trl']}-transformers-{found['transformers']}-v{LAYOUT}.json"


def from_class(config_class: type) -> ConfigFields:
    """What the check needs of a config class: the annotation of each init field, as pydantic can check it."""
    from pydantic import TypeAdapter

    hints = typing.get_type_hints(config_class)
    found: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(config_class):
        if not f.init:
            continue
        annotation = hints.get(f.name, Any)
        try:
            TypeAdapter(annotation)
        except Exception:  # a type pydantic cannot check (a callable, a torch type): accept as given
            annotation = Any
        found[f.name] = annotation
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            continue
        try:  # as a JSON file keeps it and reads it back: an enum as its value, a tuple as a list
            defaults[f.name] = json.loads(json.dumps(default.value if isinstance(default, enum.Enum) else default))
        except (TypeError, ValueError):
            pass
    return ConfigFields(config_class.__name__, found, defaults)


def encode(fields: ConfigFields) -> dict:
    """``fields`` as JSON: types written as nested names, lists and unions."""
    types_out, opaque = {}, []
    for name, annotation in fields.types.items():
        try:
            types_out[name] = _encode_type(annotation)
        except _Opaque:
            types_out[name] = "any"
            opaque.append(name)
    return {"name": fields.name, "types": types_out, "defaults": fields.defaults, "opaque": opaque}


def decode(entry: dict) -> ConfigFields:
    return ConfigFields(entry["name"], {name: _decode_type(t) for name, t in entry["types"].items()},
                        dict(entry["defaults"]), frozenset(entry["opaque"]))


def _encode_type(annotation: Any) -> Any:
    for name, known in _NAMED_TYPES.items():
        if annotation is known:
            return name
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        # transformers' strategy enums (SaveStrategy, SchedulerType, ...): pydantic accepts their values, which is
        # what a Literal of the values accepts too, with the same message for anything else
        values = [member.value for member in annotation]
        if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            return {"literal": values}
        raise _Opaque
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal and all(v is None or isinstance(v, (str, int, bool)) for v in args):
        return {"literal": list(args)}
    if origin in (Union, types.UnionType):
        return {"union": [_encode_type(a) for a in args]}
    if origin in (list, dict, tuple):
        return {origin.__name__: ["..." if a is Ellipsis else _encode_type(a) for a in args]}
    raise _Opaque


def _decode_type(encoded: Any) -> Any:
    if isinstance(encoded, str):
        return _NAMED_TYPES[encoded]
    (kind, value), = encoded.items()
    if kind == "literal":
        return Literal[tuple(value)]
    if kind == "union":
        return Union[tuple(_decode_type(v) for v in value)]
    container = _NAMED_TYPES[kind]
    if not value:
        return container
    return container[tuple(Ellipsis if v == "..." else _decode_type(v) for v in value)]


def _read(file: Path, part: str) -> dict:
    """One part of the cache file: "configs" (module:Class to its fields) or "facts" (name to value)."""
    try:
        written = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = written.get(part, {}) if isinstance(written, dict) else {}
    return found if isinstance(found, dict) else {}


def _write(part: str, key: str, value: Any) -> None:
    """Add one entry to the cache file of the installed TRL (atomically: a process writing at the same time loses
    its entry at worst, which is read from TRL again)."""
    file = cache_file()
    parts = {name: _read(file, name) for name in ("configs", "facts")}
    parts[part][key] = value
    try:
        atomic_write_text(file, json.dumps({"versions": versions(), "layout": LAYOUT, **parts}))
    except OSError:
        pass  # a read-only home: every check reads TRL, as without a cache
    _cached.cache_clear()
    _facts.cache_clear()


def cached(path: str) -> ConfigFields | None:
    """The fields of config ``module:Class`` from the cache of the installed TRL, or None when it does not hold them
    (the class was never read under this TRL: a fresh install, or a stage whose trainer this TRL lacks)."""
    return _cached(cache_file(), path)


@functools.cache
def _cached(file: Path, path: str) -> ConfigFields | None:
    entry = _read(file, "configs").get(path)
    try:
        return decode(entry) if entry else None
    except (KeyError, TypeError, ValueError, AttributeError):  # a file damaged or written by hand: read the class
        return None


def config_fields(path: str) -> ConfigFields:
    """The fields of config ``module:Class``: from the cache, else read from the class (imports TRL) and cached."""
    found = cached(path)
    if found is not None:
        return found
    encoded = encode(from_class(import_config(path)))
    _write("configs", path, encoded)
    return decode(encoded)  # as a later check reads it, so the first check says the same


@functools.cache
def _facts(file: Path) -> dict:
    """The facts part of the cache file, read once per process (and again after this process writes it)."""
    return _read(file, "facts")


def trl_fact(name: str, learn: Callable[[], Any]) -> Any:
    """A fact of the installed TRL that takes importing it to learn (a constant of its trainer's): from the cache,
    else ``learn()``, which imports TRL, and cached. The value must be JSON (a number, a string, None)."""
    facts = _facts(cache_file())
    if name in facts:
        return facts[name]
    value = learn()
    _write("facts", name, value)
    return value
