"""Every check has a fixture whose error names the exact file:line and field; --skip-invalid counts them instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_cli.core.errors import DataError
from dpo_cli.data.checks import check_of
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import TARGETS

BAD = Path(__file__).parent / "fixtures" / "data" / "bad"

# fixture -> (check, field, words the message must contain); the bad row is always on line 2
CASES = {
    "invalid_json": ("invalid-json", None, "invalid JSON at column 60"),
    "invalid_utf8": ("invalid-utf8", None, "invalid UTF-8 at byte offset"),
    "not_object": ("not-object", None, "expected a JSON object, found an array"),
    "missing_field": ("missing-field", "rejected", "missing (columns found: chosen, prompt)"),
    "null_field": ("null-field", "rejected", "is null"),
    "non_string_content": ("wrong-type", "chosen[0]", "content must be text, found a number"),
    "empty_response": ("empty-response", "rejected", "empty or whitespace only"),
    "empty_prompt": ("empty-prompt", "instruction", "instruction and input are both empty"),
    "identical": ("identical", "rejected", "chosen and rejected are identical"),
    "unknown_role": ("bad-role", "prompt[0]", "unknown role 'human'"),
    "roles_out_of_order": ("bad-role", "prompt", "a system message may only come first"),
    "last_not_assistant": ("last-not-assistant", "chosen", "last turn must be from the assistant"),
    "prompt_mismatch": ("prompt-mismatch", "rejected", "differ at turn 0"),
    "mixed_formats": ("mixed-format", "prompt", "looks like alpaca but the file was detected as trl"),
}


def _run(path: Path, **kwargs) -> tuple[list[dict], RowPipeline]:
    pipeline = RowPipeline(TARGETS["trl"], **kwargs)
    return [row for _, row in pipeline.rows(Source(path=str(path)))], pipeline


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_names_file_line_and_field(name):
    check, field, words = CASES[name]
    path = BAD / f"{name}.jsonl"
    with pytest.raises(DataError) as err:
        _run(path)
    error = err.value
    location = f"{path}:2: field '{field}': " if field else f"{path}:2: "
    assert str(error).startswith(location), str(error)
    assert words in str(error)
    assert (error.file, error.line, error.field) == (str(path), 2, field)
    assert check_of(error) == check


@pytest.mark.parametrize("name", sorted(CASES))
def test_skip_invalid_keeps_the_good_row_and_counts_the_bad(name):
    check, _, _ = CASES[name]
    rejected = []
    rows, pipeline = _run(BAD / f"{name}.jsonl", skip_invalid=True,
                          on_reject=lambda error, row: rejected.append((error, row)))
    assert len(rows) == 1
    assert pipeline.stats.dropped == {check: 1}
    # the summaries name file, line, field and reason, as the error without --skip-invalid does
    assert pipeline.stats.dropped_at[check] == [str(rejected[0][0])]
    assert str(rejected[0][0]).startswith(f"{BAD / name}.jsonl:2: ")
    assert len(rejected) == 1 and rejected[0][0].line == 2


def test_invalid_utf8_offset_is_the_byte_in_the_file():
    raw = (BAD / "invalid_utf8.jsonl").read_bytes()
    with pytest.raises(DataError) as err:
        _run(BAD / "invalid_utf8.jsonl")
    offset = raw.index(bytes([0xE9]))
    assert f"byte offset {offset} of the file" in str(err.value)


def test_bom_and_crlf_are_accepted():
    rows, _ = _run(BAD / "bom_crlf.jsonl")
    assert [r["prompt"][0]["content"] for r in rows] == ["Q1", "Q2"]


def test_stdlib_json_fallback_gives_the_same_rows_and_errors(monkeypatch):
    import json

    from dpo_cli.data import readers

    monkeypatch.setattr(readers, "_fast_loads", json.loads)
    rows, _ = _run(BAD / "bom_crlf.jsonl")
    assert len(rows) == 2
    with pytest.raises(DataError, match="invalid JSON at column 60"):
        _run(BAD / "invalid_json.jsonl")
