"""The package's shape, read from its source: no import cycles, no private names across modules, a layered layout."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dpo_cli"


def _module_name(path: Path) -> str:
    parts = ["dpo_cli", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement, at any depth (function bodies included), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _package_graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{name}: use absolute imports"
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                # "from pkg import module" names a module; "from module import name" names the module
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
                private += [f"{name} imports {a.name} from {node.module}" for a in node.names
                            if a.name.startswith("_") and node.module in modules and node.module != name]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], each module importing the next, or None."""
    sorter = graphlib.TopologicalSorter()
    for node in sorted(graph):
        sorter.add(node)
        for target in sorted(graph[node]):
            sorter.add(target, node)  # edges in the direction of the imports, so the cycle reads the same way
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_no_import_cycle():
    graph, _ = _package_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_private_name_is_imported_from_another_module():
    _, private = _package_graph()
    assert private == []


def test_lower_layers_never_import_higher_ones():
    """core is imported by everything and imports nothing of ours; data sits on core alone."""
    graph, _ = _package_graph()
    for name, targets in graph.items():
        if name.startswith("dpo_cli.core"):
            assert all(t.startswith("dpo_cli.core") for t in targets), (name, targets)
        if name.startswith("dpo_cli.data"):
            assert all(t.startswith(("dpo_cli.core", "dpo_cli.data")) for t in targets), (name, targets)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_each_layer_imports_on_its_own_in_a_fresh_interpreter():
    """The graph above sees no cycle in stages.base, but a package's __init__ runs first at import time: train.models
    once imported the stages package, which imported train.models back half-made. Import the modules that sit under
    the stages package first, each in a fresh process."""
    import subprocess
    import sys

    for module in ("dpo_cli.train.models", "dpo_cli.train.memory", "dpo_cli.evidence.tables"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-1500:]


def test_reading_a_recipe_imports_no_torch():
    """A typo in a recipe is reported in a fraction of a second: the loaders import TRL's configs only when asked."""
    import subprocess
    import sys

    probe = ("import sys, dpo_cli.train.recipe_load, dpo_cli.train.recipe_pipeline, dpo_cli.data.convert; "
             "print([m for m in ('torch', 'transformers', 'trl', 'bitsandbytes') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
