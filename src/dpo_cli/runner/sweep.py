"""Sweeps: a grid of recipe overrides run one point at a time into output_dir/<key=value,...>/, ranked by a held-out
figure into sweep.json; each point is a normal run, a completed one is skipped."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_cli.core import console
from dpo_cli.core.errors import DpoCliError, InputError, did_you_mean
from dpo_cli.core.rundir import RunDir
from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import parse_scalar

DEFAULT_SELECT = "eval.accuracy"
# --select names: eval.<key of run.json's evaluation.after>, and short names for the figures people rank by
ALIASES = {"accuracy": "reward_accuracy", "margin": "reward_margin", "kl": "kl_chosen_per_token"}
FIGURES = ("reward_accuracy", "reward_margin", "logprob_accuracy", "logps_chosen", "logps_rejected",
           "kl_chosen_per_token", "margin_std", "reward_chosen", "reward_rejected")
# the judged win rate of eval.judge (run.json's evaluation.judge): name here -> its key there
JUDGED = {"win_rate": "win_rate", "lc_win_rate": "length_controlled_win_rate"}
LOWER_IS_BETTER = {"kl_chosen_per_token"}  # less drift from the reference; every other figure ranks highest first
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=@]")  # what a point's directory name may hold (POSIX and Windows alike)
_MAX_NAME = 200


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]  # as given on the command line


@dataclass(frozen=True)
class Metric:
    name: str  # as given, e.g. eval.accuracy
    key: str  # the key of run.json's evaluation.after
    highest: bool


@dataclass(frozen=True)
class Point:
    name: str  # its directory under the sweep's output_dir
    values: dict[str, Any]  # swept key -> value, as the recipe reads it
    overrides: tuple[str, ...]  # every override that makes this point's recipe, its output_dir last
    recipe: Recipe


@dataclass(frozen=True)
class Sweep:
    recipe_path: Path
    axes: tuple[Axis, ...]
    points: tuple[Point, ...]
    output_dir: Path
    metric: Metric
    precompute_added: bool  # the sweep turned ref_model.precompute from auto to true


# --- reading the command line --------------------------------------------------------------------------------------

def split_values(text: str) -> list[str]:
    """``0.05,0.1`` -> two values; a comma inside brackets or quotes belongs to its value (``[sigmoid,sft],[sft]``)."""
    values, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


def _overlap(a: str, b: str) -> bool:
    """One key is the other or a section above it (trainer and trainer.beta)."""
    pa, pb = a.split("."), b.split(".")
    return pa[:len(pb)] == pb or pb[:len(pa)] == pa


def parse_sweeps(specs: Sequence[str], overrides: Sequence[str] = ()) -> list[Axis]:
    """Each ``--sweep KEY=V1,V2,...``: two values or more, each key swept once and not also set by an override."""
    axes: list[Axis] = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            raise InputError(f"--sweep {spec}: expected KEY=V1,V2,... (e.g. --sweep trainer.beta=0.05,0.1,0.2)")
        if key == "output_dir":
            raise InputError("--sweep output_dir: each point already writes to output_dir/<its values>; set the "
                             "sweep's own directory with the override output_dir=DIR")
        values = split_values(raw)
        if "" in values:
            raise InputError(f"--sweep {spec}: an empty value; list the values as {key}=V1,V2,...")
        if len(values) < 2:
            raise InputError(f"--sweep {spec}: a sweep needs two values or more ({key}=V1,V2,...); for one value "
                             f"give the override {key}={raw} instead")
        parsed = [repr(parse_scalar(v)) for v in values]
        twice = next((v for v, p in zip(values, parsed) if parsed.count(p) > 1), None)
        if twice is not None:
            raise InputError(f"--sweep {spec}: the value {twice} is listed twice")
        earlier = next((a.key for a in axes if _overlap(a.key, key)), None)
        if earlier is not None:
            what = "twice" if earlier == key else f"twice ({earlier} and {key} overlap)"
            raise InputError(f"--sweep {key} is given {what}: list all its values in one --sweep {earlier}=V1,V2,...")
        fixed = next((o for o in overrides if _overlap(o.partition("=")[0].strip(), key)), None)
        if fixed is not None:
            raise InputError(f"--sweep {key} is also set by the override {fixed}: keep one")
        axes.append(Axis(key, tuple(values)))
    return axes


def parse_metric(select: str | None) -> Metric:
    """``eval.KEY`` with an optional ``:max`` or ``:min``; KEY a held-out figure of run.json or a short name."""
    name = select or DEFAULT_SELECT
    text, _, order = name.partition(":")
    names = [f"eval.{k}" for k in (*ALIASES, *FIGURES, *JUDGED)]
    section, _, key = text.partition(".")
    key = ALIASES.get(key, key)
    if section != "eval" or key not in (*FIGURES, *JUDGED):
        raise InputError(f"--select {name}: not a held-out figure{did_you_mean(text, names)} (the names: "
                         f"{', '.join(names)}; add :min or :max to choose the order)")
    if order not in ("", "min", "max"):
        raise InputError(f"--select {name}: the order after ':' is min or max")
    return Metric(name, key, order == "max" if order else key not in LOWER_IS_BETTER)


def point_name(pairs: Sequence[tuple[str, str]]) -> str:
    """``trainer.beta=0.1,lora.r=16``: readable, and safe as one directory name anywhere."""
    parts = []
    for key, value in pairs:
        text = re.sub(r"\s*,\s*", "+", re.sub(r"[\[\]{}'\"]", "", value).strip())  # a list's items joined by +
        parts.append(f"{key}={_UNSAFE.sub('_', text)}")
    name = ",".join(parts)
    if len(name) > _MAX_NAME:  # file systems stop at 255 bytes; the hash keeps long names apart
        name = name[:_MAX_NAME - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


# --- the grid --------------------------------------------------------------------------------------------------------

def _with_precompute(path: Path, overrides: list[str], recipe: Recipe) -> Recipe | None:
    """This point's recipe with its reference log-probs computed once and cached, when ``ref_model.precompute`` is
    auto: every point after the first then reads them from the cache instead of running the reference model (auto
    alone computes nothing ahead on a CPU, or for a run shorter than one pass, so no later point could reuse them).
    None when the recipe says otherwise or its stage cannot precompute."""
    from dpo_cli.train.recipe_load import load_recipe
    from dpo_cli.train.stages import get_stage
    from dpo_cli.train.stages.base import TrainingStage

    stage = get_stage(recipe.stage)
    ref = recipe.ref_model
    if (not (isinstance(stage, TrainingStage) and stage.uses_ref_model) or ref.precompute != "auto" or not ref.cache
            or "precompute_ref_log_probs" in recipe.trainer or recipe.trainer.get("sync_ref_model")):
        return None
    try:
        changed = load_recipe(path, [*overrides, "ref_model.precompute=true"])
    except InputError:
        return None
    return changed if stage.reference(changed).kind == "precomputed" else None


def plan_sweep(path: Path, overrides: Sequence[str], specs: Sequence[str], select: str | None = None) -> Sweep:
    """Every point of the grid, its recipe loaded and checked as a run of its own would be, before anything runs."""
    from dpo_cli.train.recipe_load import load_recipe
    from dpo_cli.train.recipe_pipeline import is_pipeline

    if is_pipeline(path):
        raise InputError(f"{path}: --sweep runs a one-stage recipe; a pipeline (stages:) cannot be swept: sweep the "
                         "stage's own recipe, or write one pipeline per value")
    axes = parse_sweeps(specs, overrides)
    metric = parse_metric(select)
    base = load_recipe(path, overrides)
    output_dir = Path(base.output_dir)
    if RunDir(output_dir).manifest_file.is_file():
        raise InputError(f"output_dir {output_dir} holds a single run (run.json): a sweep writes its points into "
                         f"subdirectories; choose another with output_dir=DIR")
    points, added = [], False
    kept = [o for o in overrides if o.partition("=")[0].strip() != "output_dir"]  # each point has its own
    for combination in itertools.product(*(axis.values for axis in axes)):
        pairs = list(zip((axis.key for axis in axes), combination))
        name = point_name(pairs)
        swept = [*kept, *(f"{key}={value}" for key, value in pairs)]
        recipe = load_recipe(path, swept)  # a key that is no recipe key fails here, with a did-you-mean
        precomputed = _with_precompute(path, swept, recipe)
        if precomputed is not None:
            swept.append("ref_model.precompute=true")
            added = True
        swept.append(f"output_dir={output_dir / name}")
        recipe = load_recipe(path, swept)
        points.append(Point(name, {key: _value_at(recipe, key) for key, _ in pairs}, tuple(swept), recipe))
    names = [p.name for p in points]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise InputError(f"two points of the sweep would share the directory {clash}: their values differ only in "
                         "characters a directory name cannot hold; write them differently")
    return Sweep(path, tuple(axes), tuple(points), output_dir, metric, added)


def _value_at(recipe: Recipe, key: str) -> Any:
    """The value a dotted key has in a loaded recipe (what the point ran with, as run.json's recipe shows it)."""
    node: Any = recipe.model_dump(mode="json")
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def commands(sweep: Sweep, options: Sequence[str] = ()) -> list[str]:
    """One ``dpo-cli train`` line per point, for a scheduler's job array; ``options`` go on every line."""
    return [shlex.join(["dpo-cli", "train", str(sweep.recipe_path), *point.overrides, *options])
            for point in sweep.points]


# --- running ---------------------------------------------------------------------------------------------------------

def state(point: Point) -> tuple[str, str | None]:
    """(new | complete | changed | unfinished | foreign, run.json's status)."""
    from dpo_cli.runner.pipeline import is_complete

    run = RunDir(point.recipe.output_dir)
    if not run.path.is_dir() or not any(run.path.iterdir()):
        return "new", None
    manifest = run.manifest_or_none()
    if manifest is None:
        return "foreign", None
    status = manifest.get("status")
    if status == "completed":
        return ("complete" if is_complete(point.recipe) else "changed"), status
    return "unfinished", status


def _check_states(sweep: Sweep, overwrite: bool, resume: str | None) -> list[tuple[str, str | None]]:
    """Every point's state, and the first one this command cannot go on with, said before any point runs."""
    states = [state(point) for point in sweep.points]
    for point, (kind, status) in zip(sweep.points, states):
        where = f"sweep point {point.name} in {point.recipe.output_dir}"
        if kind == "foreign":
            raise InputError(f"{where} is not empty and holds no dpo-cli run (no run.json): move it away, or choose "
                             "another output_dir")
        if kind == "unfinished" and not (resume or overwrite):
            raise InputError(f"{where} is unfinished (run.json status {status}): run the same command with "
                             "--resume auto to continue it, or --overwrite to start it again")
        if kind == "changed" and not overwrite:
            raise InputError(f"{where} holds a completed run of another recipe: pass --overwrite to run it again "
                             "with this one, or choose another output_dir")
    return states


def _prepared(root: Path | None) -> set[Path]:
    """The folders of prepared rows in a data cache (data/load.py writes one per key of the sources)."""
    from dpo_cli.data.cache import META

    return {p for p in root.iterdir() if (p / META).is_file()} if root is not None and root.is_dir() else set()


def _data_cache(recipe: Recipe) -> Path | None:
    from dpo_cli.data.load import default_cache_dir

    if not recipe.data.cache:
        return None
    return Path(recipe.data.cache_dir) if recipe.data.cache_dir else default_cache_dir()


def _reuse(manifest: dict, prepared: int | None) -> dict[str, Any]:
    """What a point took from the caches: the prepared rows (a new folder in the data cache means they were read from
    the sources again) and the reference log-probs (the events its run.json records)."""
    events = manifest.get("ref_logp_cache")
    return {"splits_prepared": prepared, "ref_logps": {e["split"]: e["event"] for e in events} if events else None}


def _reuse_line(reuse: dict[str, Any]) -> str:
    if reuse["splits_prepared"] is None:
        parts = ["data: not cached (data.cache: false), read and tokenized again"]
    elif reuse["splits_prepared"]:
        parts = [f"data: {reuse['splits_prepared']} split(s) prepared into the cache"]
    else:
        parts = ["data: prepared rows reused from the cache (TRL finds its tokenized rows beside them)"]
    ref = reuse["ref_logps"]
    if ref is None:
        parts.append("reference log-probs: not precomputed")
    else:
        hits = [split for split, event in ref.items() if event == "hit"]
        computed = [split for split, event in ref.items() if event != "hit"]
        parts.append("reference log-probs: " + "; ".join(
            [*([f"read from the cache ({', '.join(hits)})"] if hits else []),
             *([f"computed and cached ({', '.join(computed)})"] if computed else [])]))
    return "; ".join(parts)


def _seconds(manifest: dict) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(manifest["finished_at"]) -
                datetime.fromisoformat(manifest["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _record(point: Point, this_run: str, manifest: dict, seconds: float | None, reuse: dict | None,
            error: str | None = None) -> dict[str, Any]:
    evaluation = manifest.get("evaluation") or {}
    after, before = evaluation.get("after") or {}, evaluation.get("before") or {}
    judge = evaluation.get("judge") or {}
    record = {
        "name": point.name, "output_dir": point.recipe.output_dir, "values": point.values,
        "overrides": list(point.overrides), "status": manifest.get("status", "failed"), "this_run": this_run,
        "steps": manifest.get("global_step"), "seconds": seconds,
        "heldout": {**{key: after[key] for key in FIGURES if isinstance(after.get(key), (int, float))},
                    **{name: judge[key] for name, key in JUDGED.items() if isinstance(judge.get(key), (int, float))}},
        "heldout_before": {key: before[key] for key in FIGURES if isinstance(before.get(key), (int, float))},
        "heldout_pairs": after.get("pairs"),
        "reuse": reuse,
    }
    if error:
        record["error"] = error
    return record


def rank(records: list[dict], metric: Metric) -> list[dict]:
    """Best first by the metric; points without it (failed, no held-out data) last, in grid order."""
    def key(item):
        index, record = item
        value = record["heldout"].get(metric.key)
        return (value is None, 0 if value is None else -value if metric.highest else value, index)

    return [record for _, record in sorted(enumerate(records), key=key)]


def summary(sweep: Sweep, records: list[dict]) -> dict[str, Any]:
    ranked = rank(records, sweep.metric)
    best = ranked[0]["name"] if ranked and sweep.metric.key in ranked[0]["heldout"] else None
    return {"recipe": str(sweep.recipe_path), "output_dir": str(sweep.output_dir),
            "sweep": {axis.key: list(axis.values) for axis in sweep.axes},
            "select": {"metric": sweep.metric.name, "key": sweep.metric.key,
                       "order": "highest first" if sweep.metric.highest else "lowest first"},
            "best": best, "points": ranked}


def run_sweep(sweep: Sweep, *, overwrite: bool = False, resume: str | None = None, resume_force: bool = False,
              on_result=None) -> dict[str, Any]:
    """Run every point not yet complete, one at a time, then write sweep.json; returns its contents. A point that
    fails is recorded and the next one runs; a signal stops the sweep (sweep.json says how far it got)."""
    from dpo_cli.runner.pipeline import run_stage
    from dpo_cli.train import checkpoints

    states = _check_states(sweep, overwrite, resume)
    if sweep.precompute_added and any(kind != "complete" for kind, _ in states):
        console.note("sweep: ref_model.precompute auto became true, so the first point computes the reference "
                     "log-probs once and every later point reads them from the cache")
    records: list[dict] = []
    total = len(sweep.points)
    try:
        for number, (point, (kind, _)) in enumerate(zip(sweep.points, states), 1):
            run = RunDir(point.recipe.output_dir)
            head = f"sweep point {number}/{total} {point.name}"
            if kind == "complete":
                console.note(f"{head}: complete in {run}, skipped")
                manifest = run.manifest()
                records.append(_record(point, "skipped", manifest, _seconds(manifest), None))
                continue
            point_resume, point_overwrite, doing = None, overwrite, "training"
            if kind == "unfinished" and resume:
                if checkpoints.newest_complete(run.path)[0] is not None:
                    point_resume, doing = "auto", "resuming from its newest checkpoint"
                else:
                    point_overwrite, doing = True, "no complete checkpoint to resume from: training it again"
            console.stdout.rule(f"{head}: {doing} into {run}")
            cache = _data_cache(point.recipe)
            folders = _prepared(cache)
            started = time.monotonic()
            try:
                result = run_stage(point.recipe, overwrite=point_overwrite, resume=point_resume,
                                   resume_force=resume_force)
            except DpoCliError as exc:  # a diverged or failed point does not stop the others (a signal does)
                console.error(f"{head} failed: {exc}")
                manifest = run.manifest_or_none() or {}
                records.append(_record(point, "failed", {**manifest, "status": manifest.get("status", "failed")},
                                       time.monotonic() - started, None, str(exc)))
                continue
            seconds = time.monotonic() - started
            reuse = _reuse(result.manifest, len(_prepared(cache) - folders) if cache is not None else None)
            if on_result is not None:
                on_result(result)
            console.note(f"{head}: {seconds:.1f} s; {_reuse_line(reuse)}")
            records.append(_record(point, "resumed" if point_resume else "ran", result.manifest, seconds, reuse))
    finally:  # also when a signal stops the sweep: the points done so far are written down
        if records:
            done = {r["name"] for r in records}
            rest = [_record(p, "not run", RunDir(p.recipe.output_dir).manifest_or_none() or {"status": None},
                            None, None) for p in sweep.points if p.name not in done]
            RunDir(sweep.output_dir).write_json(RunDir.SWEEP, summary(sweep, records + rest))
    return summary(sweep, records)


def sweep_command(path: Path, overrides: Sequence[str], specs: Sequence[str], *, select: str | None,
                  print_commands: bool, dry_run: bool, overwrite: bool, resume: str | None, resume_force: bool,
                  nproc: int | None, accelerate_config: str | None, share_gpus: bool, plan_only: bool) -> None:
    """``dpo-cli train RECIPE --sweep ...``: the grid's commands, its plan, or the grid run and its table."""
    if not specs:
        raise InputError("--select and --print-commands go with --sweep KEY=V1,V2,...")
    if plan_only:
        raise InputError("--json and --gpu-memory plan one run: give the point's values as overrides instead of "
                         "--sweep (dpo-cli train RECIPE KEY=VALUE --dry-run --json)")
    if print_commands and resume:
        raise InputError("--print-commands prints each point's first run; add --resume auto to the line of a point "
                         "that has a checkpoint (a point without one would refuse it)")
    sweep = plan_sweep(path, overrides, specs, select)
    if print_commands:
        options = [*(["--nproc", str(nproc)] if nproc else []),
                   *(["--accelerate-config", accelerate_config] if accelerate_config else []),
                   *(["--share-gpus"] if share_gpus else []), *(["--overwrite"] if overwrite else []),
                   *(["--dry-run"] if dry_run else [])]
        for line in commands(sweep, options):
            console.stdout.out(line, highlight=False)
        return
    if nproc or accelerate_config or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("a sweep runs its points one after another in this process; to run each point on several "
                         "processes, add --print-commands and start each printed line (it keeps --nproc)")
    if resume not in (None, "auto"):
        raise InputError("with --sweep, --resume takes auto (each unfinished point goes on from its own newest "
                         "checkpoint)")
    from dpo_cli.evidence.tables import print_sweep_summary

    if dry_run:
        states = [state(point) for point in sweep.points]
        console.stdout.print(f"sweep of {len(sweep.points)} points into {sweep.output_dir}, ranked by "
                             f"{sweep.metric.name}:")
        for point, (kind, status) in zip(sweep.points, states):
            what = {"new": "would train", "complete": "complete, would be skipped",
                    "changed": "holds a completed run of another recipe (--overwrite runs it again)",
                    "unfinished": f"unfinished ({status}): --resume auto continues it",
                    "foreign": "not empty and no dpo-cli run: would be refused"}[kind]
            console.stdout.print(f"  {point.name}: {what}", markup=False)
        console.stdout.print("dry run: nothing trained or written; one point's full plan: dpo-cli train "
                             f"{path} {' '.join(shlex.quote(o) for o in sweep.points[0].overrides[:-1])} --dry-run",
                             markup=False)
        return
    from dpo_cli.evidence.tables import print_run_summary

    result = run_sweep(sweep, overwrite=overwrite, resume=resume, resume_force=resume_force,
                       on_result=lambda r: print_run_summary(console.stdout, r))
    summary_json = RunDir(sweep.output_dir).read_json(RunDir.SWEEP) or result
    print_sweep_summary(console.stdout, summary_json)
    failed = [p["name"] for p in summary_json["points"] if p["status"] != "completed"]
    if failed:
        raise DpoCliError(f"{len(failed)} of {len(summary_json['points'])} sweep points did not complete: "
                          f"{', '.join(failed)}; the table and {sweep.output_dir / RunDir.SWEEP} hold the rest")
    console.stdout.print(f"[bold green]sweep done[/]: {len(summary_json['points'])} points; table in "
                         f"{sweep.output_dir / RunDir.SWEEP}; dpo-cli report {sweep.output_dir} puts them side by side "
                         "in one HTML page")
