"""dpo-cli report RUN1 RUN2 ... and report SWEEP_DIR: one page side by side, checked in the HTML and, where Chromium
is installed, as a browser renders it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dpo_cli.evidence.runs_report import SECTIONS, write_reports
from helpers import CHROMIUM, IMAGE_WIDTHS, rendered_dom, run_cli
from test_report import AFTER, make_run

RECIPE = "stage: dpo\nmodel:\n  name_or_path: tiny\ntrainer:\n  beta: {beta}\n  max_steps: 12\noutput_dir: {out}\n"


def _run(path: Path, beta: float, accuracy: float, *, metrics: bool = False, prompt: str = "What is 32 plus 17?"):
    make_run(path, metrics=metrics, generations=True)
    (path / "recipe.resolved.yaml").write_text(RECIPE.format(beta=beta, out=path))
    manifest = json.loads((path / "run.json").read_text())
    manifest["evaluation"]["after"] = {**AFTER, "reward_accuracy": accuracy}
    (path / "run.json").write_text(json.dumps(manifest))
    compare = json.loads((path / "compare.json").read_text())
    compare["rows"][0].update(prompt=[{"role": "user", "content": prompt}], tuned_greedy=f"answer at beta {beta}")
    (path / "compare.json").write_text(json.dumps(compare))
    return path


def _sweep(tmp_path: Path, metrics: bool = False) -> Path:
    """A sweep's directory as dpo-cli train --sweep leaves it: the points, and sweep.json listing them best first."""
    sweep = tmp_path / "sweep"
    points = [("trainer.beta=0.1", 0.1, 0.875), ("trainer.beta=0.2", 0.2, 0.625), ("trainer.beta=0.05", 0.05, 0.5)]
    for name, beta, accuracy in points:
        _run(sweep / name, beta, accuracy, metrics=metrics)
    (sweep / "sweep.json").write_text(json.dumps({"points": [{"name": name} for name, _, _ in points]}))
    return sweep


def test_runs_side_by_side_show_figures_differences_and_generations(tmp_path):
    a, b = _run(tmp_path / "a", 0.1, 0.875), _run(tmp_path / "b", 0.3, 0.625)
    html = write_reports([a, b], tmp_path / "compare.html").read_text()
    assert all(f'<section id="{key}"><h2>{title}</h2>' in html for key, title in SECTIONS.items())
    assert "<tr><td>a</td><td>completed</td><td>dpo</td><td class=num>12</td><td class=num>8</td>" \
           "<td class=num>0.875</td>" in html
    assert "<tr><td>b</td><td>completed</td><td>dpo</td><td class=num>12</td><td class=num>8</td>" \
           "<td class=num>0.625</td>" in html
    differences = re.search(r"<table id=differences>(.*?)</table>", html).group(1)
    assert "<tr><td>trainer.beta</td><td>0.1</td><td>0.3</td></tr>" in differences
    assert "output_dir" not in differences and "max_steps" not in differences  # the same in both, or always apart
    assert ("<td>user: What is 32 plus 17?</td><td>dunno</td><td>answer at beta 0.1</td><td>answer at beta 0.3</td>"
            in html)
    assert "no curves" in html and "<script" not in html


def test_a_sweeps_directory_is_its_points_best_first(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    code, stdout, err = run_cli(capsys, "report", str(sweep))
    assert code == 0, err
    html = (sweep / "report.html").read_text()
    labels = re.findall(r"<tr><td>(trainer\.beta=[0-9.]+)</td><td>completed", html)
    assert labels == ["trainer.beta=0.1", "trainer.beta=0.2", "trainer.beta=0.05"]
    assert html.index("0.875") < html.index("0.625") < html.index("<td class=num>0.500</td>")


def test_several_runs_need_an_output_and_one_run_keeps_its_own_report(tmp_path, capsys):
    a, b = _run(tmp_path / "a", 0.1, 0.875), _run(tmp_path / "b", 0.3, 0.625)
    code, _, err = run_cli(capsys, "report", str(a), str(b))
    assert code == 2 and "add -o FILE" in err
    code, _, err = run_cli(capsys, "report", str(a), str(b), "-o", str(a / "compare.html"))
    assert code == 2 and "lies inside the input" in err
    code, _, err = run_cli(capsys, "report", str(a), str(tmp_path / "nothing"), "-o", str(tmp_path / "c.html"))
    assert code == 2 and "has no run.json" in err
    code, _, err = run_cli(capsys, "report", str(a), "-o", str(tmp_path / "one.html"))
    assert code == 0, err
    assert "dpo-cli run report" in (tmp_path / "one.html").read_text()


@pytest.mark.slow
def test_curves_are_overlaid_one_line_per_run(tmp_path):
    a, b = _run(tmp_path / "a", 0.1, 0.875, metrics=True), _run(tmp_path / "b", 0.3, 0.625, metrics=True)
    html = write_reports([a, b], tmp_path / "compare.html").read_text()
    # the eight train curves of the metrics fixture, each one figure with both runs
    assert html.count('src="data:image/png;base64,') == 8
    assert 'alt="loss"' in html and 'alt="rewards/margins"' in html


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs the chromium Debian package (/usr/bin/chromium)")
def test_the_side_by_side_page_renders_in_headless_chromium_with_every_runs_figures(tmp_path):
    sweep = _sweep(tmp_path, metrics=True)
    html = write_reports([sweep]).read_text()
    cells = ("document.body.setAttribute('data-cells',[...document.querySelectorAll('#figures tr')].map("
             "r=>[...r.cells].map(c=>c.innerText).join('|')).join(';'));")
    dom = rendered_dom(html, tmp_path, IMAGE_WIDTHS + cells)
    assert [int(w) for w in re.search(r'data-widths="([^"]*)"', dom).group(1).split(",")] == [640] * 8
    rows = re.search(r'data-cells="([^"]*)"', dom).group(1).split(";")
    assert [row.split("|")[0] for row in rows[1:]] == ["trainer.beta=0.1", "trainer.beta=0.2", "trainer.beta=0.05"]
    assert [row.split("|")[5] for row in rows[1:]] == ["0.875", "0.625", "0.500"]
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in dom
