"""Several runs side by side in one self-contained HTML page: the recipe keys that differ, held-out figures, curves
overlaid and the same prompts' generations in columns; for a list of run directories or a sweep's directory."""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from dpo_cli.core.errors import InputError
from dpo_cli.core.rundir import RunDir
from dpo_cli.evidence.compare import prompt_text
from dpo_cli.evidence.plots import CURVES
from dpo_cli.evidence.report import CSS
from dpo_cli.evidence.tables import SWEEP_COLUMNS

SECTIONS = {
    "runs": "Runs and held-out figures after training",
    "recipes": "Recipe keys that differ",
    "curves": "Training curves, overlaid",
    "generations": "The same prompts, tuned greedy answers side by side",
}
_KEEP_OUT = {"output_dir"}  # differs between any two runs by construction


class Run:
    """One run directory as the page shows it: a short label, run.json, the resolved recipe flattened."""

    def __init__(self, path: Path, label: str):
        self.dir, self.label = RunDir(path), label
        self.manifest = self.dir.manifest()
        text = self.dir.recipe_text()
        self.recipe = _flatten(yaml.safe_load(text) or {}) if text else {}

    def figures(self) -> dict[str, Any]:
        return ((self.manifest.get("evaluation") or {}).get("after")) or {}

    def records(self) -> list[dict]:
        try:
            return [r for r in self.dir.metrics() if r.get("split", "train") == "train"]
        except InputError:
            return []

    def generations(self) -> dict | None:
        return self.dir.read_json(RunDir.COMPARE_JSON)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def collect(paths: list[Path]) -> list[Run]:
    """Each path a run directory, or a sweep's directory (its points, best first, as sweep.json lists them)."""
    runs: list[Run] = []
    for path in paths:
        sweep = RunDir(path).read_json(RunDir.SWEEP)
        if not RunDir(path).manifest_file.exists() and isinstance(sweep, dict):
            for point in sweep.get("points", []):
                if RunDir(path / point["name"]).manifest_or_none():
                    runs.append(Run(path / point["name"], point["name"]))
        else:
            runs.append(Run(path, path.resolve().name))
    if len(runs) < 2:
        raise InputError("a report side by side needs two runs or more (run directories, or a sweep's directory with "
                         "two completed points); for one run: dpo-cli report RUN_DIR")
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):  # two runs of the same folder name elsewhere: tell them apart by their path
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({i + 1})"
    return runs


def _num(value: Any, fmt: str) -> str:
    return "-" if not isinstance(value, (int, float)) else escape(fmt.format(value))


def _cell(value: Any) -> str:
    return escape(json.dumps(value) if isinstance(value, (list, dict)) else "null" if value is None else str(value))


def _runs_table(runs: list[Run]) -> str:
    columns = [c for c in SWEEP_COLUMNS if any(c[1] in r.figures() for r in runs)]
    head = "".join(f"<th>{escape(h)}</th>" for h in ["run", "status", "stage", "steps", "held-out pairs",
                                                       *(c[0] for c in columns)])
    rows = []
    for run in runs:
        m, figures = run.manifest, run.figures()
        rows.append(f"<tr><td>{escape(run.label)}</td><td>{escape(str(m.get('status')))}</td>"
                    f"<td>{escape(str(m.get('stage')))}</td><td class=num>{_num(m.get('global_step'), '{}')}</td>"
                    f"<td class=num>{_num(figures.get('pairs'), '{}')}</td>"
                    + "".join(f"<td class=num>{_num(figures.get(key), fmt)}</td>" for _, key, fmt in columns)
                    + "</tr>")
    note = "" if columns else ('<p class="muted">no run has held-out figures: give the recipes data.eval or '
                               "data.eval_split</p>")
    return f"<table id=figures><tr>{head}</tr>{''.join(rows)}</table>{note}"


def differing_keys(runs: list[Run]) -> dict[str, list[Any]]:
    """Every recipe key (dotted) whose value is not the same in all runs; a key one run lacks counts as differing."""
    keys = sorted({k for r in runs for k in r.recipe} - _KEEP_OUT)
    out = {}
    for key in keys:
        values = [r.recipe.get(key, "<unset>") for r in runs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            out[key] = values
    return out


def _recipes(runs: list[Run]) -> str:
    keys = differing_keys(runs)
    if not keys:
        return '<p class="muted">the runs share every recipe key (but output_dir)</p>'
    head = "<tr><th>key</th>" + "".join(f"<th>{escape(r.label)}</th>" for r in runs) + "</tr>"
    rows = "".join(f"<tr><td>{escape(key)}</td>" + "".join(f"<td>{_cell(v)}</td>" for v in values) + "</tr>"
                   for key, values in keys.items())
    return f"<table id=differences>{head}{rows}</table>"


def _overlay(runs: list[Run], records: list[list[dict]], key: str, title: str) -> str | None:
    """One PNG (as a data: URI) with ``key`` of every run that logged it, one line each."""
    from matplotlib.figure import Figure

    lines = []
    for run, recs in zip(runs, records):
        points = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float)) and "step" in r]
        if points:
            lines.append((run.label, points))
    if not lines:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    ax = fig.add_subplot()
    for label, points in lines:
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label, linewidth=1.4)
    ax.set_title(f"{title}: {key}" if title != key else key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _curves(runs: list[Run]) -> str:
    records = [run.records() for run in runs]
    figures = []
    for title, keys in CURVES.values():
        for key in keys:
            uri = _overlay(runs, records, key, title)
            if uri:
                figures.append(f'<figure><img alt="{escape(key)}" src="{uri}"><figcaption class=muted>'
                               f"{escape(key)}</figcaption></figure>")
    if not figures:
        return ('<p class="muted">no curves: no run logged a training step (metrics.jsonl missing or empty, or '
                "trainer.logging_steps above the steps run)</p>")
    return f'<div class="plots">{"".join(figures)}</div>'


def _generations(runs: list[Run]) -> str:
    """Prompts that every run with generations (RUN/compare.json) answered, the tuned greedy answers in columns."""
    found = [(run, g) for run in runs if (g := run.generations())]
    if not found:
        return ('<p class="muted">no generations: <code>dpo-cli compare --tuned RUN --data FILE</code> writes them '
                "for a run</p>")
    answers = [{prompt_text(row["prompt"]): row for row in g.get("rows", [])} for _, g in found]
    prompts = [p for p in answers[0] if all(p in a for a in answers[1:])]
    if not prompts:
        return ('<p class="muted">the runs\' generations share no prompt: run dpo-cli compare with the same '
                "--prompts</p>")
    head = "<tr><th>prompt</th><th>base, greedy</th>" + "".join(f"<th>{escape(r.label)}</th>" for r, _ in found)
    rows = "".join(f"<tr><td>{escape(p)}</td><td>{escape(answers[0][p].get('base_greedy') or '')}</td>"
                   + "".join(f"<td>{escape(a[p].get('tuned_greedy') or '')}</td>" for a in answers) + "</tr>"
                   for p in prompts)
    missing = [r.label for r in runs if r not in [f[0] for f in found]]
    note = f'<p class="muted">no generations for {escape(", ".join(missing))}</p>' if missing else ""
    return f"<table class=gen>{head}</tr>{rows}</table>{note}"


def render_runs_report(runs: list[Run]) -> str:
    bodies = {"runs": _runs_table(runs), "recipes": _recipes(runs), "curves": _curves(runs),
              "generations": _generations(runs)}
    sections = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{bodies[key]}</section>'
                       for key, title in SECTIONS.items())
    title = f"dpo-cli runs side by side: {len(runs)} runs"
    where = "".join(f"<li>{escape(r.label)}: {escape(str(r.dir.path.resolve()))}</li>" for r in runs)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{escape(title)}</h1><ul class="muted">{where}</ul>{sections}</body></html>\n')


def is_sweep(path: Path) -> bool:
    run = RunDir(path)
    return not run.manifest_file.exists() and (run / RunDir.SWEEP).is_file()


def write_reports(paths: list[Path], output: Path | None = None, *, force: bool = False) -> Path:
    """``dpo-cli report``: one run (or a pipeline) gets its own report; several runs, or a sweep's directory, one page
    side by side (a sweep's default: SWEEP_DIR/report.html; several runs need ``-o``)."""
    from dpo_cli.core.atomic import atomic_write_text
    from dpo_cli.core.paths import check_output_file
    from dpo_cli.evidence.report import write_report

    if len(paths) == 1 and not is_sweep(paths[0]):
        return write_report(paths[0], output, force=force)
    default = paths[0] / RunDir.REPORT if len(paths) == 1 else None
    if output is None and default is None:
        raise InputError("a report of several runs needs a file to go to: add -o FILE (e.g. -o compare.html)")
    path = Path(output) if output else default
    runs = collect(paths)
    check_output_file(path, [*paths, *(r.dir.path for r in runs)], what="--output", force=force,
                      allowed=[default] if default else [])
    atomic_write_text(path, render_runs_report(runs))
    return path
