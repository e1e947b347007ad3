"""Recipe files: YAML read with line numbers, dotted command-line overrides, and errors that point at a key."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from dpo_cli.core.errors import RecipeError

# Builds the error for a key path inside the recipe: error(("trainer", "beta"), "must be positive")
ErrorAt = Callable[[Sequence[Any], str], RecipeError]


class Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-6`` as a float (YAML 1.1 wants ``5.0e-6``)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """Parse one override value the way the recipe's YAML would read it."""
    try:
        return yaml.load(text, Loader=Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def yaml_dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class Located:
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


def load_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=Loader)
        data = yaml.load(text, Loader=Loader) if node is not None else {}
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
