"""Hub datasets as sources (through load_dataset, on local folders laid out like Hub dataset repos), and the
prepared-rows cache: written once, memory-mapped, never stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpo_cli.core.errors import DataError
from dpo_cli.data import cache
from dpo_cli.data.hub import HubSpec
from dpo_cli.data.load import load_training_data
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import KINDS
from helpers import run_cli

README = """\
---
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*.parquet
  - split: test_prefs
    path: data/test_prefs-*.parquet
- config_name: tiny
  data_files:
  - split: train
    path: tiny/train.parquet
---
# A folder laid out like an UltraFeedback-binarized Hub repo (written by the test)
"""


def _uf_row(i: int) -> dict:
    """A row in UltraFeedback binarized's public schema: chosen/rejected repeat the prompt turn."""
    prompt = f"What is {i}+{i}?"
    return {"prompt": prompt, "prompt_id": str(i),
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(2 * i)}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "no idea"}],
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(2 * i)}],
            "score_chosen": 8.0, "score_rejected": 2.0}


def _canonical(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"What is {i}+{i}?"}],
            "chosen": [{"role": "assistant", "content": str(2 * i)}],
            "rejected": [{"role": "assistant", "content": "no idea"}]}


@pytest.fixture
def hub_repo(tmp_path) -> Path:
    repo = tmp_path / "ultrafeedback_binarized"
    (repo / "data").mkdir(parents=True)
    (repo / "tiny").mkdir()
    (repo / "README.md").write_text(README)
    pq.write_table(pa.Table.from_pylist([_uf_row(i) for i in range(12)]),
                   repo / "data" / "train_prefs-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([_uf_row(i) for i in range(100, 104)]),
                   repo / "data" / "test_prefs-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([_uf_row(7)]), repo / "tiny" / "train.parquet")
    return repo


def _rows(source) -> list[dict]:
    return [row for _, row in RowPipeline(KINDS["preference"]).rows(Source.of(source))]


def test_the_string_form_names_a_split(hub_repo):
    assert HubSpec.parse("hub:trl-lib/ultrafeedback_binarized") == HubSpec("trl-lib/ultrafeedback_binarized")
    assert HubSpec.parse("hub:org/name@test").split == "test"
    assert _rows(f"hub:{hub_repo}@test_prefs") == [_canonical(i) for i in range(100, 104)]


def test_an_object_names_config_and_split(hub_repo):
    assert _rows({"hub": str(hub_repo), "config": "tiny"}) == [_canonical(7)]
    assert len(_rows({"hub": str(hub_repo), "split": "train_prefs", "limit": 5})) == 5


def test_every_read_key_works_on_a_hub_source(hub_repo):
    rows = _rows({"hub": str(hub_repo), "split": "train_prefs", "where": "prompt_id == '3'",
                  "columns": {"prompt": "prompt"}})
    assert rows == [_canonical(3)]


def test_an_unknown_split_names_the_source_and_the_splits(hub_repo):
    with pytest.raises(DataError) as err:
        _rows(f"hub:{hub_repo}@validation")
    message = str(err.value)
    assert message.startswith(f"hub:{hub_repo}@validation: ") and "train_prefs" in message


def test_hub_only_keys_need_a_hub_source():
    with pytest.raises(DataError, match="split apply to hub sources only"):
        Source.of({"path": "x.jsonl", "split": "test"})


def test_an_unknown_source_key_lists_the_valid_ones():
    with pytest.raises(DataError) as err:
        Source.of({"path": "x.jsonl", "limt": 3})
    assert "unknown key 'limt' in a data source; did you mean 'limit'?" in str(err.value)
    assert "path, registry, hub" in str(err.value) and "skip_invalid" in str(err.value)


def test_pairs_and_preference_are_source_keys(tmp_path):
    data = tmp_path / "ranked.jsonl"
    data.write_text(json.dumps({"prompt": "Q", "responses": ["a", "b", "c"], "scores": [3, 2, 1]}) + "\n")
    assert len(_rows({"path": str(data)})) == 1  # best against worst
    assert len(_rows({"path": str(data), "pairs": "all"})) == 3


# the prepared-rows cache ------------------------------------------------------------------------------------------


def _pairs_file(path: Path, n: int, tools: bool = False) -> Path:
    with path.open("w") as f:
        for i in range(n):
            row = {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
            f.write(json.dumps(row) + "\n")
    return path


def test_a_second_load_reads_no_source_row(tmp_path, monkeypatch):
    data = _pairs_file(tmp_path / "pairs.jsonl", 20)
    first, fingerprint = load_training_data([str(data)], cache_dir=tmp_path / "cache")
    assert first.cache_files and Path(first.cache_files[0]["filename"]).is_relative_to(tmp_path / "cache")

    def no_reading(*args, **kwargs):
        raise AssertionError("a source row was read again")

    monkeypatch.setattr(RowPipeline, "rows", no_reading)
    second, again = load_training_data([str(data)], cache_dir=tmp_path / "cache")
    assert again == fingerprint and second[:] == first[:] and len(second) == 20
    assert second._fingerprint == first._fingerprint  # so TRL's Dataset.map finds its own cache files


def test_a_files_digest_is_remembered_while_the_file_is_unchanged(tmp_path):
    """A sweep's next point does not hash the source again; any write (a touch, an edit) makes it hash again."""
    import os

    data = _pairs_file(tmp_path / "pairs.jsonl", 5)
    first, _ = load_training_data([str(data)], cache_dir=tmp_path / "cache")
    [memo] = (tmp_path / "cache" / ".digests").iterdir()
    memo.write_text("0" * 64)  # what the next load believes, if it trusts the memo
    trusted, _ = load_training_data([str(data)], cache_dir=tmp_path / "cache")
    assert trusted.cache_files[0]["filename"] != first.cache_files[0]["filename"]
    os.utime(data)  # the same bytes, written again: hashed again, so the first prepared rows are found
    again, _ = load_training_data([str(data)], cache_dir=tmp_path / "cache")
    assert again.cache_files[0]["filename"] == first.cache_files[0]["filename"]


def test_a_file_named_relatively_or_absolutely_is_prepared_once(tmp_path, monkeypatch):
    data = _pairs_file(tmp_path / "pairs.jsonl", 5)
    absolute, _ = load_training_data([str(data)], cache_dir=tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(RowPipeline, "rows", lambda *a, **k: pytest.fail("the rows were prepared again"))
    relative, _ = load_training_data(["pairs.jsonl"], cache_dir=tmp_path / "cache")
    assert relative.cache_files[0]["filename"] == absolute.cache_files[0]["filename"]


@pytest.mark.parametrize("change", ["content", "option", "version"])
def test_a_changed_source_option_or_version_never_reuses_the_cache(tmp_path, monkeypatch, change):
    data = _pairs_file(tmp_path / "pairs.jsonl", 5)
    source = {"path": str(data)}
    first, _ = load_training_data([source], cache_dir=tmp_path / "cache")
    if change == "content":  # same size, same mtime resolution: only the bytes differ
        data.write_text(data.read_text().replace("good 4", "fine 4"))
    elif change == "option":
        source["limit"] = 3
    else:
        monkeypatch.setattr(cache, "_dpo_cli_version", lambda: "0.0.0-other")
    second, _ = load_training_data([source], cache_dir=tmp_path / "cache")
    assert second[:] != first[:] or change == "version"
    assert second.cache_files[0]["filename"] != first.cache_files[0]["filename"]
    expected = {"content": "fine 4", "option": None, "version": "good 4"}[change]
    assert expected is None and len(second) == 3 or second[4]["chosen"] == expected


def test_types_are_unified_across_batches_and_tool_calls_stay_as_written(tmp_path, monkeypatch):
    """A column that is null in the first batch and a string later, and a tool call whose arguments differ from
    row to row, come back exactly as the rows had them."""
    monkeypatch.setattr(cache, "BATCH", 2)
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]}
    rows = [{"prompt": "q1", "answer": None}, {"prompt": "q2", "answer": None}, {"prompt": "q3", "answer": "3"},
            {"prompt": [{"role": "user", "content": "q4"}, call, {"role": "tool", "content": "3"},
                        {"role": "user", "content": "and?"}], "answer": "4"}]
    data = tmp_path / "prompts.jsonl"
    # one dataset holds one kind of prompt: all text or all messages, so write two files and load each
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    texts, _ = load_training_data([str(data)], kind="prompt", cache_dir=tmp_path / "cache")
    assert texts[:] == {"prompt": ["q1", "q2", "q3"], "answer": [None, None, "3"]}
    data.write_text(json.dumps(rows[3]) + "\n")
    chats, _ = load_training_data([str(data)], kind="prompt", cache_dir=tmp_path / "cache")
    assert chats[0]["prompt"][1] == call  # no null-filled keys merged in from other rows


def test_dropped_rows_are_said_again_from_the_cache(tmp_path, capsys):
    data = _pairs_file(tmp_path / "pairs.jsonl", 4)
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    from dpo_cli.data.load import load_splits
    from dpo_cli.recipe.schema import DataSection

    section = DataSection(train=[{"path": str(data), "skip_invalid": True}], cache_dir=str(tmp_path / "cache"))
    for _ in range(2):
        train, _, info = load_splits(section, 0, "preference")
        assert len(train) == 4 and info["train"]["dropped"] == {"identical": 1}
        assert "train data: dropped: identical: 1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_trains_from_a_hub_split_offline_and_records_it(hub_repo, tiny_model, write_recipe, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = write_recipe(textwrap.dedent(f"""\
        stage: dpo
        model: {{name_or_path: builtin:tiny-chat}}
        data:
          train: {{hub: {hub_repo}, split: train_prefs}}
          eval: hub:{hub_repo}@test_prefs
          cache_dir: {tmp_path / "cache"}
        trainer: {{max_steps: 1, max_length: 64, per_device_train_batch_size: 2, save_strategy: "no"}}
        output_dir: {out}
        """))
    code, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 0, err
    assert not (tmp_path / "cache").exists()  # a dry run writes nothing of ours
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 0, err
    code, said, err = run_cli(capsys, "train", str(recipe), "--dry-run")  # prepared now: its record is read
    assert code == 0 and "train: 12 rows already prepared and checked" in said, err
    data = json.loads((out / "run.json").read_text())["data"]
    assert data["train"]["rows"] == 12 and data["eval"]["rows"] == 4
    assert data["train"]["hub"] == [{"id": str(hub_repo), "split": "train_prefs"}]
    assert data["eval"]["hub"] == [{"id": str(hub_repo), "split": "test_prefs"}]


@pytest.mark.slow
def test_a_second_run_hits_trls_tokenization_cache(tiny_model, write_recipe, tmp_path, capsys, monkeypatch):
    """The sweep case: only beta changes, so TRL's Dataset.map finds the tokenized rows it wrote the first time.
    (TRL's filter of fully truncated rows captures the whole config, beta included, so it runs again: a pass over
    the lengths alone, as in a plain TRL script.)"""
    import datasets

    data = _pairs_file(tmp_path / "pairs.jsonl", 24)
    store = tmp_path / "cache"
    computed: list[str] = []  # the maps that wrote a file rather than finding one
    original = datasets.Dataset.map

    def map_noting_writes(self, *args, **kwargs):
        before = set(store.rglob("cache-*.arrow"))
        out = original(self, *args, **kwargs)
        if set(store.rglob("cache-*.arrow")) - before:
            computed.append(str(kwargs.get("desc")))
        return out

    monkeypatch.setattr(datasets.Dataset, "map", map_noting_writes)
    text = textwrap.dedent(f"""\
        stage: dpo
        model: {{name_or_path: builtin:tiny-chat}}
        data: {{train: {data}, cache_dir: {store}}}
        trainer: {{max_steps: 1, max_length: 64, per_device_train_batch_size: 2, save_strategy: "no", beta: BETA}}
        output_dir: {tmp_path}/OUT
        """)
    for beta in ("0.1", "0.2"):
        computed.clear()
        recipe = write_recipe(text.replace("BETA", beta).replace("OUT", beta), f"{beta}.yaml")
        code, _, err = run_cli(capsys, "train", str(recipe))
        assert code == 0, err
        if beta == "0.1":
            assert any(desc.startswith("Tokenizing") for desc in computed), computed
    assert [desc for desc in computed if not desc.startswith("Dropping fully truncated")] == []


@pytest.mark.slow
def test_two_processes_prepare_the_data_once(tiny_model, tmp_path):
    """Under torchrun the main process prepares the rows, the other maps its files; the notes are said once."""
    data = _pairs_file(tmp_path / "pairs.jsonl", 16)
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        stage: dpo
        model: {{name_or_path: builtin:tiny-chat}}
        data: {{train: {{path: {data}, skip_invalid: true}}, cache_dir: {tmp_path / "cache"}}}
        trainer: {{max_steps: 1, max_length: 64, per_device_train_batch_size: 2, save_strategy: "no"}}
        output_dir: {tmp_path / "run"}
        """))
    log = tmp_path / "prepared.log"
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(f"""\
        import os, sys
        from dpo_cli.data import cache
        from dpo_cli.cli import main

        class Counted(cache.Writer):
            def __init__(self, directory):
                with open({str(log)!r}, "a") as f:
                    f.write(os.environ["RANK"] + "\\n")
                super().__init__(directory)

        cache.Writer = Counted
        sys.argv = ["dpo-cli", "train", {str(recipe)!r}]
        main()
        """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert log.read_text().split() == ["0"]  # one process read the sources
    assert done.stderr.count("train data: dropped: identical: 1") == 1
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1
