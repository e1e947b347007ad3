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


class DuplicateKey(yaml.YAMLError):
    """The same key twice in one mapping: PyYAML would keep the last one without a word."""

    def __init__(self, key: str, first: int, second: int):
        super().__init__(f"key '{key}' appears twice in the same section, at lines {first} and {second}; PyYAML "
                         f"would keep the second without a word: remove one")
        self.key, self.line = key, second


class Loader(yaml.SafeLoader):
    """SafeLoader with three mends for recipes: ``5e-6`` is a float (YAML 1.1 wants ``5.0e-6``); only true and false
    are booleans (YAML 1.2), so TRL's ``save_strategy: no`` stays the string "no"; a key given twice is an error."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *base, which the SafeLoader merges below
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKey(str(key), seen[key], line)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                             list("tTfF"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


# How many values a recipe may hold once its aliases are expanded: far above any real recipe (a 1500-stage pipeline
# holds some 20,000), far below what hangs a walk over it (nine aliases of nine aliases ... reach 10^9)
MAX_EXPANDED = 200_000
MAX_DEPTH = 100  # sections within sections: a real recipe nests fewer than ten


class NodeProblem(yaml.YAMLError):
    """A document check_node refuses."""

    def __init__(self, line: int | None, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


def check_node(root: yaml.Node | None) -> tuple[int, str] | None:
    """What makes a composed YAML document unsafe to build: ``(line, reason)`` for an alias that refers to the value
    holding it (recursive YAML), aliases that expand past MAX_EXPANDED values (a "billion laughs"), or nesting deeper
    than MAX_DEPTH; None when it is safe. Walked without recursion, each node once."""
    if root is None:
        return None
    size: dict[int, int] = {}  # id(node) -> its values once expanded, for nodes already walked
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = [] if isinstance(node, yaml.ScalarNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        line = node.start_mark.line + 1
        if done:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(child)] for child in children)
            if size[id(node)] > MAX_EXPANDED:
                return line, (f"YAML aliases expand this value to more than {MAX_EXPANDED:,} values (aliases of "
                              f"aliases, a 'billion laughs'); write the values out, or alias fewer times")
            continue
        if id(node) in size:  # an alias of a value walked already
            continue
        if len(on_path) >= MAX_DEPTH:
            return line, f"the YAML nests values more than {MAX_DEPTH} levels deep"
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return child.start_mark.line + 1, (
                    "a YAML alias refers to the value that holds it (recursive YAML), which has no end; a recipe "
                    "must be a tree")
            if id(child) not in size:
                stack.append((child, False))
    return None


def _compose(text: str) -> yaml.Node | None:
    """The node tree of ``text``; a document too deep for PyYAML's recursive parser is a NodeProblem, not a crash."""
    try:
        return yaml.compose(text, Loader=Loader)
    except RecursionError:
        raise NodeProblem(None, f"the YAML nests values more than {MAX_DEPTH} levels deep") from None


def construct(text: str) -> tuple[Any, yaml.Node | None]:
    """Compose, check (check_node), then build the values; raises NodeProblem when the check fails."""
    node = _compose(text)
    problem = check_node(node)
    if problem is not None:
        raise NodeProblem(*problem)
    if node is None:
        return None, None
    loader = Loader(text)
    try:
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def parse_scalar(text: str) -> Any:
    """Parse one override value the way the recipe's YAML would read it."""
    if not text.strip():
        return ""
    try:
        return construct(text)[0]
    except NodeProblem as exc:
        raise RecipeError(f"override value '{text[:60]}{'...' if len(text) > 60 else ''}': {exc.reason}") from None
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
            if isinstance(node, yaml.MappingNode) and isinstance(key, int) and key == 0:
                continue  # one item given where a list may be (train: {path: ...}): the error is about that item
            if isinstance(node, yaml.MappingNode):
                # the last pair wins, as in PyYAML: a merge key (<<: *base) puts the base's pairs first
                match = next((v for k, v in reversed(node.value) if k.value == key), None)
                if match is None:
                    # an unknown key: point at the key itself
                    key_node = next((k for k, _ in node.value if k.value == key), None)
                    return key_node.start_mark.line + 1 if key_node else line
                line = next(k for k, _ in reversed(node.value) if k.value == key).start_mark.line + 1
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, path: Sequence[Any], message: str) -> RecipeError:
        dotted = ".".join(str(p) for p in path)
        path = tuple(path)
        # the override that set this key or a section above it, or the one that created this section
        override = next((self.overrides[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.overrides),
                        None) or next((o for key, o in self.overrides.items() if key[:len(path)] == path and path),
                                      None)
        if override is not None:
            return RecipeError(message, file=f"command-line override '{override}'", field=dotted or None)
        return RecipeError(message, file=self.file, line=self.line(path), field=dotted or None)


def load_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    if path.is_dir():
        raise RecipeError(f"{path} is a directory; give the recipe's YAML file")
    if path.exists() and not path.is_file():  # a pipe or a device would block the read, or never end
        raise RecipeError(f"{path} is not a regular file (a pipe, device or socket); give the recipe's YAML file")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise RecipeError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {column}; save the recipe as "
                          f"UTF-8", file=path, line=line) from None
    try:
        data, node = construct(text)
    except DuplicateKey as exc:
        raise RecipeError(str(exc), file=path, line=exc.line, field=exc.key) from None
    except NodeProblem as exc:
        raise RecipeError(exc.reason, file=path, line=exc.line) from None
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
