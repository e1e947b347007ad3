"""Pipelines: a recipe with ``stages:``, named stage recipes run in order, later ones using ``${name.output_dir}``."""

from __future__ import annotations

import copy
import graphlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import RecipeError, did_you_mean
from dpo_cli.core.redact import remember
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import Located, apply_overrides, load_yaml
from dpo_cli.train.recipe_load import check_keys, check_override_depth, check_rules, check_with_trl

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
PIPELINE_KEYS = {"stages", "output_dir", "seed"}
REFERABLE = ("output_dir",)


@dataclass
class PipelineStage:
    name: str
    recipe: Recipe
    needs: list[str]  # the stages whose output this one uses


@dataclass
class Pipeline:
    output_dir: Path
    stages: list[PipelineStage]


def is_pipeline(path: str | Path) -> bool:
    """Whether a recipe file holds ``stages:`` (read cheaply, before any validation)."""
    data, _ = load_yaml(Path(path))
    return "stages" in data


def _references(value: Any, path: tuple) -> list[tuple[tuple, str, str]]:
    """Every ``${a.b}`` inside ``value``: (key path, stage name, attribute)."""
    found = []
    if isinstance(value, str):
        for match in _REFERENCE.finditer(value):
            name, _, attribute = match.group(1).strip().partition(".")
            found.append((path, name, attribute))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _references(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _references(item, path + (i,))
    return found


def _substitute(value: Any, outputs: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _REFERENCE.sub(lambda m: outputs[m.group(1).strip().split(".")[0]], value)
    if isinstance(value, dict):
        return {k: _substitute(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, outputs) for v in value]
    return value


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of the reference graph as [a, b, ..., a], each stage referring to the next, or None."""
    sorter = graphlib.TopologicalSorter()
    for name, refs in graph.items():
        sorter.add(name)
        for ref in refs:
            sorter.add(ref, name)  # edges in the direction of the references, so the cycle reads the same way
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def load_pipeline(path: str | Path, overrides: list[str] | tuple = (), *, trl: bool = True) -> Pipeline:
    """Read and check a pipeline: names, references (unknown names, cycles, order), then every stage's recipe (with
    TRL's own checks unless ``trl`` is false: recipe_load.load_recipe)."""
    path = Path(path)
    check_override_depth(overrides)
    data, root = load_yaml(path)
    located = Located(path, root, {})
    for key in data:
        if key not in PIPELINE_KEYS:
            raise located.error((key,), f"unknown pipeline key '{key}'{did_you_mean(str(key), PIPELINE_KEYS)}; "
                                "stage settings go inside each entry of stages:")
    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        raise located.error(("stages",), "stages: must be a list of stage recipes, each with a name:")
    # a YAML alias (sampling: *shared) is one object in every stage that names it: copy each stage on its own, so an
    # override addressed to one stage changes that stage alone
    stages = [copy.deepcopy(entry) for entry in stages]
    names: list[str] = []
    for i, entry in enumerate(stages):
        if not isinstance(entry, dict):
            raise located.error(("stages", i), "each stage is a mapping with name:, stage:, model:, data:, ...")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise located.error(("stages", i, "name"), "each stage needs a name: letters, digits, - and _ "
                                f"(got {name!r})")
        if name in names:
            raise located.error(("stages", i, "name"), f"two stages are named '{name}'; names must be unique")
        if "output_dir" in entry:
            raise located.error(("stages", i, "output_dir"), "a stage writes to the pipeline's output_dir/NAME; "
                                "set output_dir once, at the top of the pipeline")
        names.append(name)

    # overrides: NAME.section.key=value for one stage, output_dir=/seed= for the pipeline
    origin: dict[tuple, str] = {}
    for item in overrides:
        head, _, rest = item.partition(".")
        if head in names and rest:
            index = names.index(head)
            for key_path in apply_overrides(stages[index], [rest]):
                origin[("stages", index) + key_path] = item
        elif item.partition("=")[0].strip() in ("output_dir", "seed"):
            origin.update(apply_overrides(data, [item]))
        else:
            raise RecipeError(f"override '{item}': in a pipeline, start with a stage name "
                              f"({', '.join(names)}), e.g. {names[-1]}.trainer.max_steps=2, or set output_dir=DIR")
    located.overrides = origin
    remember([data, stages])  # the stages are copies, overrides applied: a secret given as NAME.trainer.hub_token=

    graph: dict[str, list[str]] = {}
    for i, (name, entry) in enumerate(zip(names, stages)):
        graph[name] = []
        for key_path, ref, attribute in _references(entry, ("stages", i)):
            if ref not in names:
                raise located.error(key_path, f"${{{ref}.{attribute}}} refers to no stage named '{ref}'"
                                    f"{did_you_mean(ref, names)}; the stages are: {', '.join(names)}")
            if attribute not in REFERABLE:
                raise located.error(key_path, f"${{{ref}.{attribute or '?'}}}: a stage can only be referred to by "
                                    f"its {', '.join(REFERABLE)} (write ${{{ref}.output_dir}})")
            if ref not in graph[name]:
                graph[name].append(ref)
    cycle = _cycle(graph)
    if cycle:
        first = names.index(cycle[0])
        shown = cycle if len(cycle) <= 8 else [*cycle[:3], "...", *cycle[-3:]]
        length = "" if len(cycle) <= 8 else f" ({len(cycle) - 1} stages)"
        raise located.error(("stages", first, "name"), "stages refer to each other in a cycle: "
                            + " -> ".join(shown) + f"{length}; a stage can only use the output of a stage before it")
    for i, name in enumerate(names):
        for ref in graph[name]:
            if names.index(ref) > i:
                raise located.error(("stages", i, "name"), f"stage '{name}' uses ${{{ref}.output_dir}} but '{ref}' "
                                    f"runs after it; list '{ref}' before '{name}'")

    output_dir = Path(data.get("output_dir") or Path("runs") / path.stem)
    outputs = {name: str(output_dir / name) for name in names}
    recipes = []
    for i, (name, entry) in enumerate(zip(names, stages)):
        stage_data = _substitute({k: v for k, v in entry.items() if k != "name"}, outputs)
        stage_data["output_dir"] = outputs[name]
        if "seed" in data:
            stage_data.setdefault("seed", data["seed"])
        recipes.append(check_keys(stage_data, located, ("stages", i)))
    recipes = [check_rules(recipe, located, ("stages", i)) for i, recipe in enumerate(recipes)]
    # every stage checked without TRL first, so a mistake in the last stage is not reported after TRL's import
    if trl:
        recipes = [check_with_trl(recipe, located, ("stages", i)) for i, recipe in enumerate(recipes)]
    return Pipeline(output_dir, [PipelineStage(name, recipe, graph[name]) for name, recipe in zip(names, recipes)])
