"""The --where language: what it accepts, what it refuses, and that it never evaluates Python."""

from __future__ import annotations

import pytest

from dpo_cli.core.errors import DataError
from dpo_cli.data.where import FilterError, compile_where

ROW = {"language": "zh", "score": 7.5, "n": 3, "tags": ["math", "easy"], "meta": {"source": "web"}, "ok": True,
       "note": None}


@pytest.mark.parametrize("expression, expected", [
    ("language == 'zh'", True),
    ('language != "zh"', False),
    ("score > 7 and n <= 3", True),
    ("score > 8 or n == 3", True),
    ("not language == 'en'", True),
    ("language in ['zh', 'ja']", True),
    ("language not in ('en')", True),
    ("'math' in tags", True),
    ("len(tags) == 2", True),
    ("meta.source == 'web'", True),
    ("ok == true and note == null", True),
    ("(score >= 7.5) and not (n > 3 or language == 'en')", True),
    ("score > -1", True),
    ("language == 'it\\'s'", False),
])
def test_expressions(expression, expected):
    assert bool(compile_where(expression)(ROW)) is expected


@pytest.mark.parametrize("expression, words", [
    ("language ==", "expected a value at column 12"),
    ("language = 'zh'", "unexpected character '='"),
    ("__import__('os')", "expected 'and', 'or' or the end"),
    ("__import__('os').system('true')", "unexpected character '.'"),
    ("language == 'zh' and", "expected a value"),
    ("", "empty"),
    ("len(tags", "expected ')'"),
])
def test_malformed_expressions_are_data_errors(expression, words):
    with pytest.raises(DataError) as err:
        compile_where(expression)
    assert words in str(err.value)


def test_a_missing_column_reads_as_null_and_bad_comparisons_are_errors():
    assert compile_where("lang == null")(ROW) is True
    assert compile_where("meta.missing.deeper == 'x'")(ROW) is False
    with pytest.raises(FilterError, match="cannot compare text with a number"):
        compile_where("language > 3")(ROW)
