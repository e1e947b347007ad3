"""The package's shape, read from its source: no import cycles, no private names across modules, every import
between packages allowed by one table of layers, and no stage named outside the stage modules."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dpo_cli"

# package -> the packages it may import (dpo_cli is the package's own __init__). Each layer sits on the ones listed:
# core <- data <- recipe <- train <- evidence <- runner <- cli. recipe says what a recipe may hold (schema, YAML,
# TRL's field names) and knows no stage; train holds the stages, models, TRL configs and compat, and the loader that
# checks a recipe against its stage; evidence scores and shows runs; runner runs a stage, a pipeline or a sweep and
# writes its evidence; cli parses and calls one of them.
ALLOWED_EDGES: dict[str, set[str]] = {
    "dpo_cli": set(),
    "core": set(),
    "data": {"core"},
    "recipe": {"core", "data"},
    "train": {"core", "data", "recipe"},
    "evidence": {"core", "data", "recipe", "train"},
    "runner": {"core", "data", "recipe", "train", "evidence"},
    "cli": {"core", "data", "recipe", "train", "evidence", "runner"},
    "__main__": {"cli"},
}

STAGES_PACKAGE = "dpo_cli.train.stages"
# what code outside the stage modules may import of the stages package: the registry and the contract
STAGE_ENTRY_POINTS = {STAGES_PACKAGE, f"{STAGES_PACKAGE}.base"}
# LLaMA-Factory's importer translates that tool's stage names into ours: a table that has to name both
NAMES_STAGES_BY_NATURE = {"dpo_cli.train.llamafactory"}


def _module_name(path: Path) -> str:
    parts = ["dpo_cli", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(module: str) -> str:
    """The top-level package (or module) of ours that ``module`` belongs to: core, train, cli, ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(tree: ast.AST):
    """Every import statement at any depth: function bodies (lazy imports) and ``if TYPE_CHECKING:`` included."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom, modules) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    # "from pkg import module" names a module; "from module import name" names the module
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]


def _edges(name: str, source: str, modules) -> list[tuple[str, int]]:
    """(module of ours, line) for each import in ``source``, the module ``name``."""
    found = []
    for node in _imports(ast.parse(source)):
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{name}: use absolute imports"
        found += [(t, node.lineno) for t in _targets(node, modules) if t.split(".")[0] == "dpo_cli"]
    return found


def _package_graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _imports(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.module != name:
                private += [f"{name} imports {a.name} from {node.module}" for a in node.names if a.name.startswith("_")]
        for target, _ in _edges(name, path.read_text(encoding="utf-8"), modules):
            # importing a.b.c from outside a.b runs a.b's __init__ first: that import is an edge too (train.models
            # once named stages.base under TYPE_CHECKING, and the stages package imports train.models back)
            parents = [".".join(target.split(".")[:i]) for i in range(2, target.count(".") + 1)]
            graph[name] |= {t for t in [target, *parents]
                            if t in modules and t != name and not name.startswith(t + ".")}
    return graph, private


def _package_edges(modules: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> "module:line" of each import, from {module name: source}."""
    edges: dict[tuple[str, str], list[str]] = {}
    for name, source in modules.items():
        for target, line in _edges(name, source, modules):
            if _package_of(target) != _package_of(name):
                edges.setdefault((_package_of(name), _package_of(target)), []).append(f"{name}:{line}")
    return edges


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


def test_every_import_between_packages_is_in_the_table():
    sources = {name: path.read_text(encoding="utf-8") for name, path in _modules().items()}
    assert {_package_of(name) for name in sources} == set(ALLOWED_EDGES), "place each package in ALLOWED_EDGES"
    wrong = {f"{a} -> {b}": where for (a, b), where in _package_edges(sources).items() if b not in ALLOWED_EDGES[a]}
    assert wrong == {}


def test_the_table_is_layered():
    assert _cycle(ALLOWED_EDGES) is None, " -> ".join(_cycle(ALLOWED_EDGES))


def test_the_table_check_counts_lazy_and_type_checking_imports():
    sources = {
        "dpo_cli.core.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dpo_cli.train.b import B\n",
        "dpo_cli.recipe.c": "def f():\n    import dpo_cli.evidence.d\n",
        "dpo_cli.train.b": "from dpo_cli.core import a\n",
        "dpo_cli.evidence.d": "",
    }
    assert _package_edges(sources) == {("core", "train"): ["dpo_cli.core.a:3"],
                                       ("recipe", "evidence"): ["dpo_cli.recipe.c:2"],
                                       ("train", "core"): ["dpo_cli.train.b:1"]}


def _names_a_stage(node: ast.AST) -> bool:
    """An expression that holds a stage's name by what it is called: stage, recipe.stage, run["stage"],
    manifest.get("stage"), stage.name."""
    if isinstance(node, ast.Name):
        return "stage" in node.id
    if isinstance(node, ast.Attribute):
        return node.attr == "stage" or (node.attr == "name" and _names_a_stage(node.value))
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "stage"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "stage"
    return False


def _literals(node: ast.AST) -> list:
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [item.value for item in items if isinstance(item, ast.Constant)]


def _stage_names_used(source: str, names: set[str]) -> list[str]:
    """Where ``source`` compares a stage's name with a literal one, matches on it, or fetches a stage by a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literal = {v for o in operands for v in _literals(o) if isinstance(v, str)} & names
            if literal and any(_names_a_stage(o) for o in operands):
                found.append(f"{node.lineno}: compares a stage with {sorted(literal)}")
        elif isinstance(node, ast.Match) and _names_a_stage(node.subject):
            literal = {v for c in node.cases for p in ast.walk(c.pattern) if isinstance(p, ast.MatchValue)
                       for v in _literals(p.value)} & names
            found += [f"{node.lineno}: matches a stage on {sorted(literal)}"] if literal else []
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) \
                and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("get_stage", "training_stage"):
            literal = {v for a in node.args for v in _literals(a)} & names
            found += [f"{node.lineno}: fetches stage {sorted(literal)}"] if literal else []
    return sorted(found, key=lambda where: int(where.split(":")[0]))


def test_no_stage_is_named_outside_the_stage_modules():
    """run.py, launch.py, tables.py and the rest ask the stage (its flags and hooks); a new stage is one module and
    one line in the registry (the stages package's __init__)."""
    from dpo_cli.train.stages import stage_names

    names = set(stage_names())
    wrong = []
    for name, path in _modules().items():
        if name == STAGES_PACKAGE or name.startswith(STAGES_PACKAGE + ".") or name in NAMES_STAGES_BY_NATURE:
            continue
        source = path.read_text(encoding="utf-8")
        wrong += [f"{name}:{where}" for where in _stage_names_used(source, names)]
        wrong += [f"{name}:{line}: imports {target}" for target, line in _edges(name, source, _modules())
                  if target.startswith(STAGES_PACKAGE) and target not in STAGE_ENTRY_POINTS]
    assert wrong == []


def test_the_stage_name_check_finds_a_stage_name():
    names = {"dpo", "reward", "kto"}
    source = ('if recipe.stage == "dpo": pass\n'
              'rows = 1 if manifest.get("stage") == "reward" else 2\n'
              'if stage.name in ("kto", "x"): pass\n'
              'match lf_stage:\n    case "kto": pass\n'
              's = get_stage("dpo")\n'
              'if self.evaluation == "reward" or kind == "dpo": pass\n'  # not a stage's name: not counted
              't = stages.training_stage("kto")\n')
    assert _stage_names_used(source, names) == ["1: compares a stage with ['dpo']", "2: compares a stage with ['reward']",
                                                "3: compares a stage with ['kto']", "4: matches a stage on ['kto']",
                                                "6: fetches stage ['dpo']", "8: fetches stage ['kto']"]


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
