"""`dpo-cli inspect-data`: counts per check and exit status, languages, lengths, token statistics and samples."""

from __future__ import annotations

import json
from pathlib import Path

from dpo_cli.core.builtins import resolve_builtin
from dpo_cli.data.inspection import inspect, over_limit, print_report
from test_data_convert import run_cli  # pytest puts tests/ on sys.path

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def test_clean_file_exits_0_and_bad_file_exits_2_without_heavy_imports():
    clean = run_cli("inspect-data", str(FIXTURES / "messages.jsonl"))
    assert clean.returncode == 0, clean.stderr
    assert "messages" in clean.stdout and "score-order" in clean.stdout and "clean" in clean.stdout
    assert "IMPORTED []" in clean.stderr
    bad = run_cli("inspect-data", str(FIXTURES / "bad" / "identical.jsonl"), str(FIXTURES / "bad" /
                                                                                   "null_field.jsonl"))
    assert bad.returncode == 2
    assert "2 rows fail a check" in bad.stdout
    assert f"{FIXTURES / 'bad' / 'identical.jsonl'}:2" in bad.stdout


def test_report_counts_duplicates_languages_and_lengths():
    report = inspect(["builtin:demo/train.jsonl", str(FIXTURES / "bad" / "identical.jsonl")])
    assert report.stats.dropped == {"identical": 1}
    assert report.rows == 404 + 1
    assert report.stats.languages["zh"] > 100 and report.stats.languages["en"] > 100
    assert len(report.char_lengths["prompt"]) == report.rows == len(report.char_lengths["chosen"])
    demo = resolve_builtin("builtin:demo/train.jsonl")
    keys = [json.dumps({k: json.loads(line)[k] for k in ("prompt", "chosen", "rejected")})
            for line in Path(demo).read_text(encoding="utf-8").splitlines()]
    assert report.duplicates == len(keys) - len(set(keys))
    assert len(report.samples) == 3 and not report.clean


def test_duplicates_are_counted(tmp_path):
    line = (FIXTURES / "trl_standard.jsonl").read_text(encoding="utf-8").splitlines()[0]
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join([line, line, line]) + "\n", encoding="utf-8")
    report = inspect([str(path)])
    assert report.rows == 3 and report.duplicates == 2 and report.clean


def test_token_statistics_and_samples_through_the_chat_template(tiny_model):
    from rich.console import Console
    from transformers import AutoTokenizer

    report = inspect([str(FIXTURES / "trl_explicit.jsonl"), str(FIXTURES / "trl_implicit.jsonl")],
                     tokenizer=AutoTokenizer.from_pretrained(tiny_model), max_length=12)
    tokens = report.token_lengths
    assert set(tokens) == {"prompt", "chosen", "rejected"} and len(tokens["prompt"]) == 4
    assert all(n > 0 for n in tokens["chosen"])
    over = over_limit(report)
    prompt_side = sum(1 for p in tokens["prompt"] if p >= 12)
    assert over["lost"] == prompt_side
    assert over["cut"] == sum(1 for p, c, r in zip(tokens["prompt"], tokens["chosen"], tokens["rejected"])
                                        if p < 12 and p + max(c, r) > 12)
    assert report.chat_template and len(report.rendered) == 3
    assert "What is 2+2?" in report.rendered[0] and "4" in report.rendered[0]
    console = Console(record=True, width=150)
    print_report(console, report)
    text = console.export_text()
    assert "lengths (tokens)" in text and "over --max-length 12" in text
