"""Defects found on real files (issue 18, item 5): each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

from dpo_cli.data.convert import ConvertOptions, convert
from dpo_cli.data.inspection import inspect
from dpo_cli.data.load import load_training_data

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_file_named_twice_is_read_twice_with_a_warning(tmp_path):
    data = str(FIXTURES / "trl_standard.jsonl")
    summary = convert(ConvertOptions(inputs=[data, data], output=tmp_path / "out.jsonl"))
    assert summary.written == 4
    assert summary.stats.warned == {"read-twice": 2}
    assert summary.stats.warned_at["read-twice"][0].startswith(f"{data}:1")
    report = inspect([data, data])
    assert report.rows == 4 and report.duplicates == 2 and report.stats.warned == {"read-twice": 2}
    dataset, _ = load_training_data([data, data])
    assert len(dataset) == 4


def test_one_file_read_by_two_sources_with_different_columns_and_where(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"q": f"question {i}", "good": f"yes {i}", "bad": f"no {i}", "n": i}
                                          for i in range(4)])
    dataset, _ = load_training_data([
        {"path": str(path), "columns": {"prompt": "q", "chosen": "good", "rejected": "bad"}, "where": "n < 2"},
        {"path": str(path), "columns": {"prompt": "q", "chosen": "bad", "rejected": "good"}, "where": "n >= 2"},
    ])
    assert dataset["chosen"] == ["yes 0", "yes 1", "no 2", "no 3"]
    report = inspect([str(path), str(path)], columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert report.rows == 8
