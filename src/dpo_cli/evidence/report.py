"""The HTML run report: one self-contained file (inline CSS and PNGs, no scripts, no network) per run directory."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.errors import InputError
from dpo_cli.core.paths import check_output_file
from dpo_cli.core.rundir import RunDir
from dpo_cli.evidence.compare import prompt_text
from dpo_cli.evidence.plots import CURVES, plot_run
from dpo_cli.evidence.tables import METRIC_ROWS, judge_summary_rows, length_bias_line, pipeline_rows

# Section id -> heading; every report has all of them, saying so when a run has nothing for one.
SECTIONS = {
    "summary": "Summary",
    "recipe": "Recipe",
    "versions": "Versions",
    "data": "Data",
    "curves": "Training curves",
    "evaluation": "Held-out evaluation, before and after",
    "judge": "Judged win rate",
    "generations": "Sample generations",
    "warnings": "Watchdog",
}

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1d2330;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #d5dae3;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #d5dae3;padding:.25rem .6rem;vertical-align:top}
th{background:#f2f4f8;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:.8rem;overflow-x:auto;font-size:.85rem}
.plots{display:flex;flex-wrap:wrap;gap:1rem} .plots figure{margin:0}
.plots img{max-width:34rem;width:100%;border:1px solid #e3e6ec}
.thumbs{display:flex;flex-wrap:wrap;gap:.4rem;margin-top:.4rem} .thumbs figure{margin:0;font-size:.75rem}
.thumbs img{max-width:96px;max-height:96px;border:1px solid #e3e6ec;display:block}
.muted{color:#667085} .warn{color:#9a3412} .gen td{white-space:pre-wrap;max-width:22rem;font-size:.9rem}
"""


def _kv_table(pairs) -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape('' if v is None else str(v))}</td></tr>"
                   for k, v in pairs)
    return f"<table>{rows}</table>"


def _summary(m: dict) -> str:
    device = m.get("device") or {}
    pairs = [("status", m.get("status")), ("stage", m.get("stage")), ("steps", m.get("global_step")),
             ("started", m.get("started_at")), ("finished", m.get("finished_at")),
             ("device", f"{device.get('device')} ({device.get('reason')}), precision {device.get('precision')}"),
             ("host", device.get("host")), ("git commit", m.get("git_commit"))]
    made = m.get("pairs")
    if made:
        pairs += [("pairs written", f"{made['pairs']} from {made['prompts']} prompts x {made['samples_per_prompt']} "
                                    "samples"),
                  ("dropped", f"{made['ties']} ties, {made['prompts_too_few_samples']} prompts with fewer than 2 "
                              f"usable samples ({made['empty_samples']} empty, {made['unscored_samples']} unscored)"),
                  ("samples cut at max_new_tokens", made["unfinished_samples"]),
                  ("mean reward of the samples", made.get("mean_reward")),
                  ("mean reward, chosen / rejected", f"{made.get('mean_reward_chosen')} / "
                                                     f"{made.get('mean_reward_rejected')}")]
        if made.get("heldout"):
            pairs.append(("mean reward on held-out prompts", made["heldout"].get("mean_reward")))
    if m.get("error"):
        pairs.append(("error", m["error"]))
    if m.get("status") in ("interrupted", "failed"):
        pairs.append(("newest complete checkpoint", m.get("checkpoint") or "none"))
    stop = m.get("early_stopping")
    if stop:
        pairs.append(("early stopping", f"{stop['metric']}: stopped at step {stop['stopped_at']}, best "
                                        f"{stop['best']} at step {stop['best_step']}" if stop.get("stopped_at")
                      else f"{stop['metric']}: did not trigger (best {stop['best']} at step {stop['best_step']})"))
    return _kv_table(pairs)


def _data(m: dict) -> str:
    data = m.get("data") or {}
    if not data:
        return '<p class="muted">no data summary in run.json</p>'
    rows = []
    for split, info in data.items():
        source = ", ".join(info.get("files") or []) or (f"{info['split_of_train']:.0%} of the training data"
                                                        if "split_of_train" in info else "")
        rows.append(f"<tr><td>{escape(split)}</td><td class=num>{info.get('rows')}</td><td>{escape(source)}</td>"
                    f"<td><code>{escape(str(info.get('fingerprint') or '')[:16])}</code></td></tr>")
    return ("<table><tr><th>split</th><th>rows</th><th>source</th><th>fingerprint (sha256)</th></tr>"
            + "".join(rows) + "</table>")


def _images(run: RunDir) -> list[Path]:
    folder = run.plots_dir
    order = [*CURVES, "eval", "heldout_margins"]
    images = sorted(folder.glob("*.png") if folder.is_dir() else [],
                    key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name))
    if not images and run.metrics_file.is_file():
        try:
            images = plot_run(run)
        except InputError:
            images = []
    return images


def _curves(run: RunDir) -> str:
    images = _images(run)
    if not images:
        return '<p class="muted">no curves: the run logged no metrics (metrics.jsonl is missing or empty)</p>'
    figures = []
    for path in images:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{escape(path.stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption class=muted>{escape(path.name)}</figcaption></figure>")
    return f'<div class="plots">{"".join(figures)}</div>'


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else escape(fmt.format(value))


def _evaluation(m: dict) -> str:
    evaluation = m.get("evaluation") or {}
    if not (evaluation.get("before") or evaluation.get("after")):
        return ('<p class="muted">no held-out evaluation: the recipe had no data.eval or data.eval_split (or the run '
                'did not finish). <code>dpo-cli eval RUN_DIR --data FILE</code> scores any pairs.</p>')
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    rows = "".join(f"<tr><td>{escape(label)}</td><td class=num>{_fmt(before.get(key), fmt)}</td>"
                   f"<td class=num>{_fmt(after.get(key), fmt)}</td></tr>"
                   for label, key, fmt in METRIC_ROWS if key in after or key in before)
    parts = [f"<p>{after.get('pairs', before.get('pairs'))} held-out pairs</p>",
             f"<table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>"]
    quantiles = after.get("margin_quantiles")
    if quantiles:
        cells = "".join(f"<td class=num>{_fmt(v, '{:+.4f}')}</td>" for v in quantiles.values())
        heads = "".join(f"<th>{escape(k)}</th>" for k in quantiles)
        parts.append(f"<p>distribution of the margin after training</p><table><tr>{heads}</tr><tr>{cells}</tr>"
                     "</table>")
    line = length_bias_line(after.get("length_bias"))
    if line:
        parts.append(f"<p>{escape(line)}</p>")
    return "".join(parts)


def _judge(m: dict) -> str:
    evaluation = m.get("evaluation") or {}
    if not evaluation.get("judge"):
        return ('<p class="muted">not judged: <code>dpo-cli eval RUN_DIR --judge JUDGE</code> (or <code>eval.judge'
                '</code> in the recipe) judges the run\'s answers against its starting model</p>')
    return "".join(_one_judgement(r) for r in [evaluation["judge"], *evaluation.get("judge_also", [])])


def _one_judgement(result: dict) -> str:
    parts = [f"<h3>Against {escape(str(result['against']))}</h3>", _kv_table(judge_summary_rows(result))]
    for title, rows in (("Largest gains", result.get("largest_gains")), ("Largest losses",
                                                                         result.get("largest_losses"))):
        if not rows:
            continue
        cells = "".join(f"<tr><td class=num>{_fmt(r['margin'], '{:+.3f}')}</td><td>{escape(r['prompt'])}</td>"
                        f"<td>{escape(r['tuned'] or '(empty)')}</td><td>{escape(r['base'] or '(empty)')}</td></tr>"
                        for r in rows)
        parts.append(f"<p>{title}, by the judge's margin</p><table class=gen><tr><th>margin</th><th>prompt</th>"
                     f"<th>tuned</th><th>against</th></tr>{cells}</table>")
    return "".join(parts)


def _generations(run: RunDir) -> str:
    path = run / RunDir.COMPARE_JSON
    if not path.is_file():
        return (f'<p class="muted">no generations yet: <code>dpo-cli compare --tuned {escape(str(run))} '
                f'--data FILE</code> writes them</p>')
    result = json.loads(path.read_text(encoding="utf-8"))
    s = result.get("settings", {})
    rows = "".join(
        f"<tr><td>{escape(prompt_text(r['prompt']))}{_thumbnails(r)}</td>"
        + "".join(f"<td>{escape(r.get(k) or '')}</td>" for k in ("base_greedy", "tuned_greedy", "base_sampled",
                                                                  "tuned_sampled"))
        + "</tr>" for r in result.get("rows", []))
    return (f"<p>base <code>{escape(result.get('base', ''))}</code>, tuned <code>{escape(result.get('tuned', ''))}"
            f"</code>; sampled with temperature {s.get('temperature')}, top-p {s.get('top_p')}, seed {s.get('seed')}"
            f"</p><table class=gen><tr><th>prompt</th><th>base, greedy</th><th>tuned, greedy</th>"
            f"<th>base, sampled</th><th>tuned, sampled</th></tr>{rows}</table>")


def _thumbnails(row: dict) -> str:
    """The images of a compared prompt, as the small thumbnails compare.json keeps (data: URIs: the report stays one
    file), each captioned with where the image is."""
    figures = []
    for image in row.get("images") or []:
        thumbnail = str(image.get("thumbnail") or "")
        source = escape(str(image.get("source", "")))
        img = f'<img src="{escape(thumbnail)}" alt="{source}">' if thumbnail.startswith("data:image/") else ""
        figures.append(f"<figure>{img}<figcaption class=muted>{source}</figcaption></figure>")
    return f'<div class="thumbs">{"".join(figures)}</div>' if figures else ""


def _warnings(m: dict) -> str:
    items = list(m.get("warnings") or [])
    if m.get("status") == "failed" and m.get("error"):
        items.insert(0, m["error"])
    if not items:
        return '<p class="muted">no warnings: the loss stayed finite and no known failure pattern was seen</p>'
    return "<ul>" + "".join(f'<li class="warn">{escape(w)}</li>' for w in items) + "</ul>"


def render_report(run_dir: str | Path) -> str:
    run = RunDir(run_dir)
    manifest, recipe_text = run.manifest(), run.recipe_text()
    versions = manifest.get("versions") or {}
    bodies = {
        "summary": _summary(manifest),
        "recipe": f"<pre>{escape(recipe_text)}</pre>" if recipe_text else f'<p class="muted">no {RunDir.RECIPE}</p>',
        "versions": _kv_table(versions.items()),
        "data": _data(manifest),
        "curves": _curves(run),
        "evaluation": _evaluation(manifest),
        "judge": _judge(manifest),
        "generations": _generations(run),
        "warnings": _warnings(manifest),
    }
    sections = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{bodies[key]}</section>'
                       for key, title in SECTIONS.items())
    title = f"dpo-cli run report: {run.path.resolve().name}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{escape(title)}</h1><p class="muted">{escape(str(run.path.resolve()))}</p>{sections}'
            f"</body></html>\n")


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join("<tr>" + "".join(f"<td{'' if i == 0 else ' class=num'}>{escape(c)}</td>" for i, c in enumerate(row))
                    + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def render_pipeline_report(pipeline_dir: str | Path) -> str:
    """A pipeline's report: every stage's figures, the rounds, and each stage's held-out evaluation, with links to
    the stages' own reports."""
    run = RunDir(pipeline_dir)
    summary = run.read_json(RunDir.PIPELINE)
    if not isinstance(summary, dict):
        raise InputError(f"{run / RunDir.PIPELINE}: not a pipeline summary that can be read (run the pipeline again "
                         "to rewrite it)")
    stage_head, stage_rows, round_head, round_rows = pipeline_rows(summary)
    parts = [f"<section id=stages><h2>Stages</h2>{_text_table(stage_head, stage_rows)}</section>"]
    if round_rows:
        parts.append("<section id=rounds><h2>Rounds</h2><p>Each round samples its policy and judges the samples, then "
                     "trains on the pairs; the held-out accuracy is the trained stage's, on its data.eval pairs.</p>"
                     f"{_text_table(round_head, round_rows)}</section>")
    for name in summary["stages"]:
        stage_run = RunDir(run.path / name)
        manifest = stage_run.manifest_or_none()
        link = f'<a href="{escape(name)}/{RunDir.REPORT}">{escape(name)}</a>' if manifest else escape(name)
        body = _summary(manifest) + _evaluation(manifest) + _judge(manifest) if manifest \
            else '<p class="muted">not run yet</p>'
        parts.append(f"<section id=\"stage-{escape(name)}\"><h2>Stage {link}</h2>{body}</section>")
    title = f"dpo-cli pipeline report: {run.path.resolve().name}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{escape(title)}</h1><p class="muted">{escape(str(run.path.resolve()))}</p>{"".join(parts)}'
            f"</body></html>\n")


def write_report(run_dir: str | Path, output: str | Path | None = None, *, force: bool = False) -> Path:
    """Write the report (default ``RUN_DIR/report.html``, always replaced; another existing file only with
    ``force``) and return its path. For a pipeline's directory, the pipeline's report, and each completed stage's own
    report beside it."""
    run = RunDir(run_dir)
    default = run / RunDir.REPORT
    path = Path(output) if output else default
    check_output_file(path, [run.path], what="--output", force=force, allowed=[default])
    if not run.manifest_file.exists() and (run / RunDir.PIPELINE).is_file():
        html = render_pipeline_report(run_dir)
        for name in run.read_json(RunDir.PIPELINE)["stages"]:
            if RunDir(run.path / name).manifest_or_none():
                write_report(run.path / name)
    else:
        html = render_report(run_dir)
    atomic_write_text(path, html)
    return path
