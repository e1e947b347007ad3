"""dpo-cli report: one self-contained HTML file with every section, rendered in headless Chromium when present."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dpo_cli.evidence.report import SECTIONS, write_report
from helpers import CHROMIUM, IMAGE_WIDTHS, rendered_dom
from test_plots import write_metrics

AFTER = {"pairs": 8, "reward_accuracy": 0.875, "reward_margin": 0.12, "logprob_accuracy": 0.75,
         "logps_chosen": -60.0, "logps_rejected": -70.0, "kl_chosen_per_token": 0.0123, "margin_std": 0.05,
         "margin_quantiles": {"min": -0.1, "p10": 0.0, "p25": 0.05, "p50": 0.1, "p75": 0.15, "p90": 0.2, "max": 0.3},
         "margin_histogram": {"edges": [-0.1, 0.0, 0.1, 0.2, 0.3], "counts": [1, 3, 3, 1]},
         "length_bias": {"chosen_longer_fraction": 0.625, "correlation": 0.5, "r_squared": 0.25,
                         "margin_per_token": 0.004}}
JUDGE = {"prompts": 10, "wins": 6, "ties": 2, "losses": 2, "win_rate": 0.7,
         "interval": {"low": 0.3968, "high": 0.8922, "level": 0.95, "method": "Wilson"},
         "length_controlled_win_rate": 0.6123, "mean_length": {"tuned": 41.5, "base": 37.0, "unit": "tokens"},
         "mean_margin": 0.3, "tuned": "run", "against": "base-model", "prompts_source": "eval.jsonl",
         "judge": {"path": "runs/rm", "kind": "reward"},
         "settings": {"decoding": "greedy", "n": 10, "max_new_tokens": 64, "sample": False, "temperature": 0.7,
                      "top_p": 0.9, "seed": 0},
         "largest_gains": [{"prompt": "Name a <colour>", "tuned": "red", "base": "", "margin": 1.25, "outcome": 1.0}],
         "largest_losses": [{"prompt": "Say hi", "tuned": "no", "base": "hi", "margin": -0.5, "outcome": 0.0}],
         "rows_file": "judge.jsonl"}
BEFORE = {"pairs": 8, "reward_accuracy": 0.0, "reward_margin": 0.0, "logprob_accuracy": 0.5, "logps_chosen": -61.0,
          "logps_rejected": -69.0, "kl_chosen_per_token": 0.0}


def make_run(run_dir: Path, *, evaluation=True, metrics=True, generations=True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"status": "completed", "stage": "dpo", "global_step": 12, "started_at": "2026-11-22T00:00:00+00:00",
                "finished_at": "2026-11-22T00:01:00+00:00", "git_commit": "abc123",
                "versions": {"dpo-cli": "0.1.0", "trl": "1.16.0", "torch": "2.13.0+cpu"},
                "device": {"device": "cpu", "reason": "no GPU found", "precision": "fp32", "host": "box"},
                "data": {"train": {"files": ["train.jsonl"], "rows": 24, "fingerprint": "f" * 64},
                         "eval": {"files": ["eval.jsonl"], "rows": 8, "fingerprint": "e" * 64}},
                "warnings": ["step 9: the log-probs of the chosen responses have been falling <steadily>"]}
    if evaluation:
        manifest["evaluation"] = {"before": BEFORE, "after": AFTER, "judge": JUDGE}
    (run_dir / "run.json").write_text(json.dumps(manifest))
    (run_dir / "recipe.resolved.yaml").write_text("stage: dpo\nmodel:\n  chat_template: '<|im_start|>{{x}}'\n")
    if metrics:
        write_metrics(run_dir)
    if generations:
        (run_dir / "compare.json").write_text(json.dumps({
            "base": "base-model", "tuned": str(run_dir), "settings": {"temperature": 0.7, "top_p": 0.9, "seed": 0},
            "rows": [{"prompt": [{"role": "user", "content": "What is 32 plus 17?"}], "base_greedy": "dunno",
                      "tuned_greedy": "49", "base_sampled": "<b>maybe</b>", "tuned_sampled": "49."}]}))
    return run_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """One full run directory and its report, shared: drawing the plots is the slow part."""
    return write_report(make_run(tmp_path_factory.mktemp("report") / "run"))


@pytest.mark.slow
def test_report_has_every_section_and_embeds_the_plots(report):
    html = report.read_text()
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{title}</h2>' in html
    assert html.count('src="data:image/png;base64,') == 8  # 7 curves + the held-out margin histogram
    assert "0.875" in html and "0.01230" in html and "25% of the margin" in html  # after-training figures
    assert "What is 32 plus 17?" in html and "&lt;b&gt;maybe&lt;/b&gt;" in html  # generations, escaped
    assert "&lt;|im_start|&gt;" in html and "falling &lt;steadily&gt;" in html
    assert "trl" in html and "1.16.0" in html and "eeeeeeeeeeeeeeee" in html  # versions, data fingerprint


@pytest.mark.slow
def test_report_needs_no_network(report):
    html = report.read_text()
    assert not re.findall(r'(?:src|href)\s*=\s*"(?!data:|#)', html)
    assert "<script" not in html and "@import" not in html and "url(" not in html


def test_report_of_a_bare_run_still_has_every_section_saying_what_is_missing(tmp_path):
    run = make_run(tmp_path / "run", evaluation=False, metrics=False, generations=False)
    html = write_report(run, tmp_path / "elsewhere.html").read_text()
    assert all(f'<section id="{key}">' in html for key in SECTIONS)
    assert "no held-out evaluation" in html and "no curves" in html and "dpo-cli compare" in html
    assert "not judged" in html
    assert not (run / "report.html").exists()


def test_report_on_a_directory_that_is_not_a_run(tmp_path):
    from dpo_cli.core.errors import InputError

    with pytest.raises(InputError, match="has no run.json"):
        write_report(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs the chromium Debian package (/usr/bin/chromium)")
def test_report_renders_in_headless_chromium_with_every_plot_showing(report, tmp_path):
    dom = rendered_dom(report.read_text(), tmp_path, IMAGE_WIDTHS)
    widths = re.search(r'data-widths="([^"]*)"', dom).group(1)
    assert [int(w) for w in widths.split(",")] == [640] * 6 + [320, 640]  # curves are 640 px, a grid of one 320
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in dom
    judged = dom.split('<section id="judge">')[1].split("</section>")[0]
    for shown in ("6 / 2 / 2", "0.700 (95% Wilson interval 0.397 to 0.892)", "0.612", "41.5 / 37.0 tokens",
                  "Name a &lt;colour&gt;", "(empty)", "-0.500"):
        assert shown in judged, shown


PAIRS = {"prompts": 6, "samples_per_prompt": 4, "samples": 24, "pairs": 5, "ties": 1, "empty_samples": 0,
         "unscored_samples": 0, "unfinished_samples": 20, "prompts_too_few_samples": 0, "mean_reward": -1.25,
         "mean_reward_chosen": -1.0, "mean_reward_rejected": -1.5, "heldout": {"prompts": 2, "samples": 8,
                                                                               "mean_reward": -1.3}}


def test_pipeline_report_shows_every_stage_and_every_round(tmp_path):
    from conftest import REPO
    from dpo_cli.core.rundir import RunDir
    from dpo_cli.runner.pipeline import pipeline_summary
    from dpo_cli.train.recipe_pipeline import load_pipeline

    pipeline = load_pipeline(REPO / "recipes" / "tiny" / "pipeline-iterative-dpo.yaml", [f"output_dir={tmp_path}"])
    for stage in pipeline.stages[:-1]:  # the last stage has not run yet
        run = make_run(tmp_path / stage.name, metrics=False, generations=False)
        if stage.recipe.stage == "pairs":
            manifest = json.loads((run / "run.json").read_text())
            del manifest["evaluation"]
            (run / "run.json").write_text(json.dumps({**manifest, "stage": "pairs", "pairs": PAIRS}))
    RunDir(tmp_path).write_json(RunDir.PIPELINE, pipeline_summary(pipeline, {"round2-dpo"}))

    html = write_report(tmp_path).read_text()
    assert "<h2>Rounds</h2>" in html and "policy sampled" in html
    assert html.count("<h2>Stage ") == 7 and 'href="round1-dpo/report.html"' in html
    assert ("<td>then trained on the pairs</td><td class=num>round1-dpo</td><td class=num>round2-dpo</td>"
            "<td class=num>-</td>") in html
    assert "<td>  on held-out prompts</td><td class=num>-1.3000</td>" in html
    assert "5 from 6 prompts x 4 samples" in html and "1 ties" in html  # a pairs stage's own figures
    assert "not run yet" in html  # final-samples
    assert (tmp_path / "round1-pairs" / "report.html").is_file() and not (tmp_path / "final-samples").exists()
