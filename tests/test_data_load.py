"""load_training_data for run.py: kinds, source objects, fingerprints; recipe data sources with precise errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dpo_cli.core.errors import DataError, RecipeError
from dpo_cli.data.load import load_training_data

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _fingerprint(rows) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def test_preference_rows_and_fingerprint_over_canonical_rows():
    dataset, fingerprint = load_training_data(["builtin:demo/train.jsonl"], "preference")
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert fingerprint == _fingerprint(dataset.to_list())
    expected = [json.loads(x) for x in (FIXTURES / "expected" / "alpaca.jsonl").read_text("utf-8").splitlines()]
    from_alpaca, fp_alpaca = load_training_data(str(FIXTURES / "alpaca.jsonl"))
    assert from_alpaca.to_list() == expected


def test_the_same_data_in_two_formats_has_one_fingerprint(tmp_path):
    canonical = tmp_path / "canonical.jsonl"
    canonical.write_bytes((FIXTURES / "expected" / "alpaca.jsonl").read_bytes())
    _, from_alpaca = load_training_data([str(FIXTURES / "alpaca.jsonl")])
    _, from_trl = load_training_data([str(canonical)])
    assert from_alpaca == from_trl


def test_source_objects_filter_limit_rename_and_force_format(tmp_path):
    path = tmp_path / "se.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "good": "yes", "bad": "no", "lang": "zh" if i % 2
                                        else "en"}) + "\n" for i in range(10)))
    source = {"path": str(path), "format": "trl", "columns": {"prompt": "question", "chosen": "good",
                                                              "rejected": "bad"},
              "where": "lang == 'zh'", "limit": 3}
    dataset, _ = load_training_data([source], "preference")
    assert dataset["prompt"] == ["q1", "q3", "q5"]
    both, _ = load_training_data([source, str(FIXTURES / "trl_standard.jsonl")])
    assert len(both) == 5


@pytest.mark.parametrize("kind, columns, rows", [
    ("kto", ["prompt", "completion", "label"], 4),
    ("prompt", ["prompt"], 2),
    ("sft", ["messages"], 2),
])
def test_kinds(kind, columns, rows):
    dataset, _ = load_training_data([str(FIXTURES / "trl_explicit.jsonl")], kind)
    assert dataset.column_names == columns and len(dataset) == rows


def test_prompt_kind_keeps_extra_columns_for_rewards():
    dataset, _ = load_training_data([str(FIXTURES / "prompt_only.jsonl")], "prompt")
    assert dataset.column_names == ["prompt", "answer"] and dataset["answer"] == ["42", "32"]


def test_text_and_conversational_sources_cannot_mix():
    with pytest.raises(DataError) as err:
        load_training_data([str(FIXTURES / "trl_explicit.jsonl"), str(FIXTURES / "trl_standard.jsonl")])
    assert err.value.line == 1 and "plain text but earlier rows are conversational" in str(err.value)


def test_nothing_left_after_filtering_is_an_error():
    with pytest.raises(DataError, match="no preference rows"):
        load_training_data([{"path": str(FIXTURES / "alpaca.jsonl"), "where": "instruction == 'none'"}])


RECIPE = """\
stage: dpo
model:
  name_or_path: builtin:tiny-chat
data:
  train:
    - builtin:demo/train.jsonl
    - path: {path}
      format: {format}
      where: "{where}"
      limit: 2
  eval: builtin:demo/eval.jsonl
output_dir: {out}
"""


def test_recipe_accepts_source_objects_and_reports_errors_with_lines(write_recipe, tmp_path):
    from dpo_cli.train.recipe_load import load_recipe

    ok = RECIPE.format(path=FIXTURES / "alpaca.jsonl", format="alpaca", where="instruction != ''", out=tmp_path / "r")
    recipe = load_recipe(write_recipe(ok))
    assert recipe.data.train[0] == "builtin:demo/train.jsonl"
    assert recipe.data.train[1] == {"path": str(FIXTURES / "alpaca.jsonl"), "format": "alpaca",
                                    "where": "instruction != ''", "limit": 2}
    dataset, _ = load_training_data(recipe.data.train)
    assert len(dataset) == 404 + 2
    json.dumps(recipe.data.train)  # run.json records the sources as written

    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(ok.replace("format: alpaca", "format: alpacca")))
    assert "line 8" in str(err.value) or ":8:" in str(err.value)
    assert "data.train.1.format" in str(err.value) and "did you mean 'alpaca'" in str(err.value)

    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(ok.replace("instruction != ''", "instruction !=")))
    assert ":9:" in str(err.value) and "data.train.1.where" in str(err.value) and "expected a value" in str(err.value)

    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(ok.replace("limit: 2", "limt: 2")))
    assert ":10:" in str(err.value) and "unknown key 'limt'" in str(err.value)


@pytest.mark.parametrize("eval_split", [None, 0.05, 0.5, 0.37])
def test_the_dry_runs_count_and_fingerprint_are_what_a_run_records(eval_split):
    """check_data streams the rows (no dataset, no rejects file); its figures decide defaults as load_splits' do."""
    from dpo_cli.data.load import check_data, load_splits
    from dpo_cli.recipe.schema import DataSection

    data = DataSection(train=["builtin:demo/train.jsonl"], eval_split=eval_split)
    checked = check_data(data, "preference")["train"]
    _, _, info = load_splits(data, 42, "preference")
    assert checked["fingerprint"] == info["train"]["fingerprint"]
    assert checked["rows"] - checked.get("held_out", 0) == info["train"]["rows"]
    assert checked.get("held_out", 0) == info.get("eval", {}).get("rows", 0)
