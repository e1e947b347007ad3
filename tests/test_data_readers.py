"""Readers: jsonl(.gz), json arrays, parquet, csv/tsv, save_to_disk directories, globs; each row keeps its location."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dpo_cli.core.errors import DataError
from dpo_cli.data.readers import expand_paths, iter_records
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import TARGETS

ROWS = [{"instruction": "Say hi", "input": "", "chosen": "Hi!", "rejected": "Go away."},
        {"instruction": "说你好", "input": "", "chosen": "你好！", "rejected": "走开。"}]
EXPECTED = [{"prompt": [{"role": "user", "content": r["instruction"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in ROWS]


def _convert(path) -> list[dict]:
    return [row for _, row in RowPipeline(TARGETS["trl"]).rows(Source(path=str(path)))]


def test_jsonl_gz(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    assert _convert(path) == EXPECTED


def test_json_array_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS + [{"instruction": "x", "input": "", "chosen": "a", "rejected": "a"}]),
                    encoding="utf-8")
    with pytest.raises(DataError) as err:
        _convert(path)
    assert err.value.line == 3 and err.value.field == "rejected"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert _convert(path) == EXPECTED


def test_json_with_one_object_is_explained(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS[0]))
    with pytest.raises(DataError, match="top-level array"):
        _convert(path)


def test_json_lines_named_json_are_read_as_json_lines(tmp_path):
    """The Hub's SHP (and many exports) write one object per line under a .json name."""
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    assert _convert(path) == EXPECTED
    path.write_text(json.dumps(ROWS[0]) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        _convert(path)
    assert err.value.line == 2


def test_parquet_streams_in_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS * 3000), path, row_group_size=1000)
    rows = _convert(path)
    assert len(rows) == 6000 and rows[:2] == EXPECTED
    assert [r.line for r in iter_records(path)][-1] == 6000


def test_csv_and_tsv(tmp_path):
    import csv

    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"d{suffix}"
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROWS[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(ROWS)
        assert _convert(path) == EXPECTED
        assert [r.line for r in iter_records(path)] == [2, 3]  # line 1 is the header


def test_save_to_disk_directory(tmp_path):
    from datasets import Dataset

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert _convert(tmp_path / "ds") == EXPECTED


def test_dataset_dict_directory_asks_for_a_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="name one split directory"):
        _convert(tmp_path / "dd")
    assert _convert(tmp_path / "dd" / "train") == EXPECTED


def test_glob_and_several_files_keep_their_own_locations(tmp_path):
    for i, row in enumerate(ROWS):
        (tmp_path / f"part-{i}.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert expand_paths(str(tmp_path / "part-*.jsonl")) == [tmp_path / "part-0.jsonl", tmp_path / "part-1.jsonl"]
    records = [(Path(r.file).name, r.line) for _, r in [(0, rec) for rec in iter_records(tmp_path / "part-1.jsonl")]]
    assert records == [("part-1.jsonl", 1)]
    assert _convert(tmp_path / "part-*.jsonl") == EXPECTED
    with pytest.raises(DataError, match="matches no files"):
        _convert(tmp_path / "nothing-*.jsonl")


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="not found"):
        _convert(tmp_path / "absent.jsonl")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported data file type '.xlsx'"):
        _convert(tmp_path / "d.xlsx")


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(DataError) as err:
        _convert(path)
    assert err.value.line == 3
