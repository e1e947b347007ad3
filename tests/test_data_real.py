"""Data as people have it: LLaMA-Factory's demo files and files in OpenAI's and PKU's public schemas, through every
adapter, convert-data (round trips, --to, --map, empty output, --preference), inspect-data and the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_cli.core.errors import DataError, InputError
from dpo_cli.data.convert import ConvertOptions, convert, print_summary
from dpo_cli.data.formats import AdapterOptions
from dpo_cli.data.hub import HubSpec
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import KINDS, TARGETS

FIXTURES = Path(__file__).parent / "fixtures" / "data"
LF = FIXTURES / "llamafactory"
PUBLIC = FIXTURES / "public"
REGISTRY = LF / "dataset_info.json"

# fixture (relative to tests/fixtures/data) -> the format it is detected as
REAL = {
    "llamafactory/kto_en_demo.json": "kto",
    "llamafactory/glaive_toolcall_en_demo.json": "sharegpt",
    "llamafactory/glaive_toolcall_zh_demo.json": "sharegpt",
    "llamafactory/alpaca_en_demo.json": "alpaca",
    "llamafactory/alpaca_zh_demo.json": "alpaca",
    "llamafactory/dpo_en_demo.json": "sharegpt",
    "llamafactory/dpo_zh_demo.json": "sharegpt",
    "llamafactory/v1_dpo_demo.jsonl": "llamafactory-v1",
    "llamafactory/v1_sft_demo.jsonl": "conversation",
    "llamafactory/reason_tool_use_demo_50.jsonl": "conversation",
    "public/openai_dpo.jsonl": "openai-dpo",
    "public/openai_tools.jsonl": "conversation",
    "public/prompt_messages.jsonl": "prompt-only",
    "public/pku_safety.jsonl": "pku-saferlhf",
    "public/sharegpt_kto.jsonl": "sharegpt",
}


def _expected(name: str) -> list[dict]:
    folder, file = name.split("/")
    path = FIXTURES / "expected" / folder / (file.split(".")[0] + ".jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _rows(path, target="trl", options=None, **source) -> tuple[list[dict], RowPipeline]:
    pipeline = RowPipeline(TARGETS[target] if target in TARGETS else KINDS[target], options)
    return [row for _, row in pipeline.rows(Source(path=str(path), **source))], pipeline


def _read_output(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines()]


def _convert(source, out: Path, **options):
    return convert(ConvertOptions(inputs=[str(source)], output=out, **options))


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_is_detected_and_converts_to_the_expected_rows(name):
    rows, pipeline = _rows(FIXTURES / name)
    assert list(pipeline.stats.formats.values()) == [REAL[name]]
    assert rows == _expected(name)
    forced, _ = _rows(FIXTURES / name, format=REAL[name])
    assert forced == rows


@pytest.mark.parametrize("name", sorted(REAL))
def test_round_trip_through_convert_data_is_stable(tmp_path, name):
    """source -> canonical file -> canonical file again: the second pass is read as TRL's own rows (or the same
    canonical layout) and changes nothing."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _convert(FIXTURES / name, first)
    summary = _convert(first, second)
    assert first.read_bytes() == second.read_bytes()
    assert _read_output(second) == _expected(name)
    assert summary.written == len(_expected(name))


@pytest.mark.parametrize("name, to", [
    ("llamafactory/alpaca_en_demo.json", "alpaca"),
    ("llamafactory/alpaca_zh_demo.json", "alpaca"),
    ("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"),
    ("llamafactory/glaive_toolcall_zh_demo.json", "sharegpt"),
    ("llamafactory/dpo_en_demo.json", "sharegpt"),
    ("llamafactory/dpo_zh_demo.json", "sharegpt"),
])
def test_round_trip_back_to_llamafactory_layouts(tmp_path, name, to):
    """To LLaMA-Factory's layout and back: the same canonical rows (the layout itself may differ: an input joins its
    instruction, as LLaMA-Factory joins them, and tools are written in OpenAI's wrapped form)."""
    back = tmp_path / "back.json"
    _convert(FIXTURES / name, back, to=to)
    rows, pipeline = _rows(back)
    assert list(pipeline.stats.formats.values()) == [REAL[name]] and rows == _expected(name)


def test_tool_calls_reach_the_canonical_rows_in_openai_shape():
    rows, _ = _rows(LF / "glaive_toolcall_en_demo.json")
    call = rows[0]["messages"][1]
    assert call == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}}]}
    assert rows[0]["messages"][2] == {"role": "tool", "content": '{"age": 31}'}
    assert rows[0]["tools"][0]["type"] == "function" and rows[0]["tools"][0]["function"]["name"] == "calculate_age"
    assert "tools" not in rows[2]  # its tools column is an empty list
    openai, _ = _rows(PUBLIC / "openai_tools.jsonl")
    assert openai[0]["messages"][1]["tool_calls"][0] == {
        "id": "call_id", "type": "function",
        "function": {"name": "get_current_weather", "arguments": {"location": "San Francisco, USA",
                                                                  "format": "celsius"}}}
    assert openai[0]["messages"][2] == {"role": "tool", "content": "21.0", "tool_call_id": "call_id"}


def test_content_parts_are_joined_and_v1_reasoning_and_tool_call_parts_kept():
    rows, _ = _rows(PUBLIC / "openai_tools.jsonl")
    assert rows[1]["messages"][0] == {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."}
    reasoning, _ = _rows(LF / "reason_tool_use_demo_50.jsonl")
    turn = reasoning[0]["messages"][2]
    assert turn["tool_calls"][0]["function"] == {"name": "get_products_in_category",
                                                 "arguments": {"category": "Books", "limit": 15, "skip": 20}}
    assert turn["reasoning_content"].startswith("Okay, the user wants me to retrieve 15 products")


def test_a_zero_weight_on_a_trained_turn_is_a_warning():
    _, pipeline = _rows(PUBLIC / "openai_tools.jsonl")
    assert pipeline.stats.warned == {"loss-weight": 1}
    assert pipeline.stats.warned_at["loss-weight"] == [
        f"{PUBLIC / 'openai_tools.jsonl'}:2: field 'messages': turn 2 has weight 0, but TRL trains on it"]


def test_kto_labels_are_kept_and_sft_leaves_out_the_undesirable_rows_and_says_so():
    kto, _ = _rows(LF / "kto_en_demo.json", "kto")
    assert [row["label"] for row in kto] == [True, False, True, False]
    assert [len(row["prompt"]) for row in kto] == [1, 1, 5, 5] and all(len(row["completion"]) == 1 for row in kto)
    sft, pipeline = _rows(LF / "kto_en_demo.json", "sft")
    assert len(sft) == 2 and all("messages" in row for row in sft)
    assert pipeline.stats.omitted == {"undesirable": 2}
    assert pipeline.stats.omitted_at["undesirable"] == [f"{LF / 'kto_en_demo.json'}:2", f"{LF / 'kto_en_demo.json'}:4"]
    with pytest.raises(DataError, match="cannot become preference pairs"):
        _rows(LF / "kto_en_demo.json", "preference")
    sharegpt_kto, _ = _rows(PUBLIC / "sharegpt_kto.jsonl", "kto")
    assert [row["label"] for row in sharegpt_kto] == [True, False]


def test_sharegpt_sft_reads_with_and_without_format():
    detected, _ = _rows(LF / "glaive_toolcall_zh_demo.json")
    forced, _ = _rows(LF / "glaive_toolcall_zh_demo.json", format="sharegpt")
    assert forced == detected and all("messages" in row for row in detected)


def test_prompt_only_messages_for_online_methods_keep_their_extra_columns():
    rows, _ = _rows(PUBLIC / "prompt_messages.jsonl", "prompt")
    assert rows[1] == {"prompt": [{"role": "system", "content": "Answer with a number."},
                                  {"role": "user", "content": "What is 2**5?"}], "answer": "32"}


def test_a_mapping_that_drops_a_non_empty_column_says_so(tmp_path):
    """The --map workaround for alpaca SFT: prompt=instruction, completion=output leaves input unread."""
    out = tmp_path / "out.jsonl"
    summary = _convert(LF / "alpaca_en_demo.json", out, columns={"prompt": "instruction", "completion": "output"})
    assert summary.stats.unused == {"input": 1}  # one of the two rows has an input
    from rich.console import Console

    console = Console(record=True, width=200)
    print_summary(console, summary)
    text = console.export_text()
    assert "columns not used" in text and "input (1 rows)" in text
    summary = _convert(LF / "alpaca_en_demo.json", out, force=True)  # read as alpaca, input is part of the prompt
    assert summary.stats.unused == {}


def test_dotted_map_paths_read_nested_values(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text(json.dumps({"q": {"text": "2+2?", "lang": "en"}, "a": {"good": "4", "bad": "5"}}) + "\n")
    rows, pipeline = _rows(path, columns={"prompt": "q.text", "chosen": "a.good", "rejected": "a.bad"})
    assert rows == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}]
    assert pipeline.stats.unused == {"q": 1}  # q.lang was not read; a was emptied by the renames
    with pytest.raises(DataError, match="column 'a.best' .* is missing"):
        _rows(path, columns={"prompt": "q.text", "chosen": "a.best", "rejected": "a.bad"})


@pytest.mark.parametrize("to, name, expected", [
    ("messages", "llamafactory/glaive_toolcall_en_demo.json", 4),
    ("messages", "llamafactory/dpo_en_demo.json", 2),
    ("messages", "llamafactory/kto_en_demo.json", 2),
    ("prompt-completion", "llamafactory/alpaca_zh_demo.json", 2),
    ("prompt-completion", "llamafactory/v1_dpo_demo.jsonl", 2),
    ("prompt-completion", "llamafactory/kto_en_demo.json", 2),
])
def test_convert_data_writes_sft_rows(tmp_path, to, name, expected):
    out = tmp_path / "sft.jsonl"
    summary = _convert(FIXTURES / name, out, to=to)
    rows = _read_output(out)
    assert len(rows) == summary.written == expected
    if to == "messages":
        assert all(set(row) <= {"messages", "tools"} and row["messages"][-1]["role"] == "assistant" for row in rows)
    else:
        assert all(row["completion"][-1]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"
                   for row in rows)
    if "kto" in name:
        assert summary.stats.omitted == {"undesirable": 2}
    if "dpo_en" in name:  # the chosen side is what SFT imitates
        assert rows[0]["messages"][-1]["content"].startswith("6778576 - 84834150134")


def test_plain_text_rows_have_no_turns_to_make_conversations_of(tmp_path):
    with pytest.raises(DataError, match="use --to prompt-completion"):
        _convert(FIXTURES / "trl_standard.jsonl", tmp_path / "o.jsonl", to="messages")
    _convert(FIXTURES / "trl_standard.jsonl", tmp_path / "o.jsonl", to="prompt-completion")
    assert _read_output(tmp_path / "o.jsonl")[0] == {"prompt": "The sky is", "completion": " blue."}


def test_one_output_holds_one_kind_of_row(tmp_path):
    with pytest.raises(DataError, match="this row holds conversations but earlier rows hold preference pairs"):
        convert(ConvertOptions(inputs=[str(LF / "dpo_en_demo.json"), str(LF / "alpaca_en_demo.json")],
                               output=tmp_path / "o.jsonl"))


def test_nothing_to_write_is_exit_2_unless_allowed(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(InputError) as err:
        _convert(LF / "kto_en_demo.json", out, to="messages", where="label == false")
    assert str(err.value) == ("no rows to write (4 rows read; 2 filtered out by --where; 2 left out: undesirable); "
                              "pass --allow-empty to write an empty file anyway")
    assert not out.exists()
    summary = _convert(LF / "kto_en_demo.json", out, to="messages", where="label == false", allow_empty=True)
    assert summary.written == 0 and out.read_text() == ""


def test_preference_options_apply_to_pku_data_only(tmp_path):
    with pytest.raises(DataError) as err:
        _convert(LF / "dpo_en_demo.json", tmp_path / "o.jsonl", preference="safer")
    assert str(err.value) == (f"{LF / 'dpo_en_demo.json'}: --preference safer applies to pku-saferlhf data only, but "
                              "this file was read as sharegpt; drop --preference, or convert the pku-saferlhf files "
                              "on their own")
    with pytest.raises(DataError, match="--pairs all applies to ranked and nectar data only"):
        _convert(LF / "dpo_en_demo.json", tmp_path / "o.jsonl", pairs="all")


def test_pku_unsafe_chosen_is_counted_and_safe_only_keeps_safe_against_unsafe(tmp_path):
    safer = _convert(PUBLIC / "pku_safety.jsonl", tmp_path / "safer.jsonl", preference="safer")
    assert safer.written == 4 and safer.stats.warned == {"unsafe-chosen": 1}  # row 2: both answers unsafe
    better = _convert(PUBLIC / "pku_safety.jsonl", tmp_path / "better.jsonl")
    assert better.stats.warned == {"unsafe-chosen": 2}
    safe_only = _convert(PUBLIC / "pku_safety.jsonl", tmp_path / "safe.jsonl", preference="safe-only")
    assert safe_only.written == 2 and safe_only.stats.omitted == {"not-safe-vs-unsafe": 2}
    rows = _read_output(tmp_path / "safe.jsonl")
    assert [r["chosen"][0]["content"][:9] for r in rows] == ["I can't h", "Never mix"]
    from rich.console import Console

    console = Console(record=True, width=200)
    print_summary(console, safer)
    text = console.export_text()
    assert "warning: unsafe-chosen" in text and "1 (the chosen response is marked unsafe" in text
    assert f"{PUBLIC / 'pku_safety.jsonl'}:2: field 'is_response_0_safe': the chosen response_0 is marked unsafe" in text


@pytest.mark.parametrize("name, fmt, rows", [
    ("alpaca_en_demo", "alpaca", 2), ("alpaca_zh_demo", "alpaca", 2), ("glaive_toolcall_en_demo", "sharegpt", 4),
    ("glaive_toolcall_zh_demo", "sharegpt", 4), ("dpo_en_demo", "sharegpt", 2), ("dpo_zh_demo", "sharegpt", 2),
    ("kto_en_demo", "sharegpt", 4),
])
def test_registry_entries_read_as_llamafactory_reads_them(name, fmt, rows):
    source = Source.of({"registry": str(REGISTRY), "name": name})
    assert source.path == str(LF / json.loads(REGISTRY.read_text())[name]["file_name"]) and source.format == fmt
    read, _ = _rows(source.path, format=source.format, columns=source.columns, tags=source.tags,
                    registry=source.registry)
    assert len(read) == rows
    stem = f"llamafactory/{name}.json"
    assert read == _expected(stem)  # the same rows as detection gives


def test_convert_data_from_a_registry_entry(tmp_path):
    out = tmp_path / "zh.jsonl"
    summary = convert(ConvertOptions(inputs=[], output=out, registry=str(REGISTRY), name="dpo_zh_demo"))
    assert summary.written == 2 and _read_output(out) == _expected("llamafactory/dpo_zh_demo.json")


def test_a_registry_hub_entry_reads_the_hub_with_its_subset_and_split():
    """LLaMA-Factory reads hf_hub_url entries from the Hub: so do we, through the same load_dataset call as hub:
    sources (offline here, so reading it names the dataset and why)."""
    source = Source.of({"registry": str(REGISTRY), "name": "dpo_mix_en"})
    assert source.hub == HubSpec("llamafactory/DPO-En-Zh-20k", config="en", split="train")
    assert (source.format, source.path) == ("sharegpt", "hub:llamafactory/DPO-En-Zh-20k[en]@train")
    with pytest.raises(DataError) as err:
        list(RowPipeline(KINDS["preference"]).rows(source))
    assert str(err.value) == ("hub:llamafactory/DPO-En-Zh-20k[en]@train: not in the datasets cache and the Hub "
                              "cannot be reached (offline); run once where the Hub is reachable, or give a local path")


@pytest.mark.parametrize("name, message", [
    ("dpo_en_demos", "no dataset named 'dpo_en_demos' in the registry; did you mean 'dpo_en_demo'?"),
])
def test_registry_entries_dpo_cli_cannot_read_say_why(name, message):
    with pytest.raises(DataError) as err:
        Source.of({"registry": str(REGISTRY), "name": name})
    assert message in str(err.value)


def test_registry_tags_name_the_message_keys(tmp_path):
    """An entry whose messages use other keys (LLaMA-Factory's tags) is read with them."""
    rows = [{"dialog": [{"speaker": "me", "text": "Hi"}, {"speaker": "bot", "text": "Hello!"}]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {
        "file_name": "d.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}}}))
    source = Source.of({"registry": str(tmp_path / "dataset_info.json"), "name": "d"})
    pipeline = RowPipeline(TARGETS["trl"], AdapterOptions())
    assert [row for _, row in pipeline.rows(source)] == [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]


def test_inspect_data_names_file_line_field_and_reason_for_each_check():
    from test_data_convert import run_cli

    bad = FIXTURES / "bad"
    result = run_cli("inspect-data", str(bad / "identical.jsonl"), str(bad / "null_field.jsonl"))
    assert result.returncode == 2
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert f"{bad / 'identical.jsonl'}:2: field 'rejected': chosen and rejected are identical" in lines
    assert f"{bad / 'null_field.jsonl'}:2: field 'rejected': is null" in lines
    registry = run_cli("inspect-data", "--registry", str(REGISTRY), "--name", "kto_en_demo")
    assert registry.returncode == 0 and "sharegpt" in registry.stdout and "IMPORTED []" in registry.stderr


def test_summary_lines_are_printed_as_written_never_as_markup(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "Q", "output": ["a", "b", "c"]}) + "\n"
                    + json.dumps({"instruction": "Q", "output": "A"}) + "\n")
    summary = _convert(path, tmp_path / "o.jsonl", skip_invalid=True)
    from rich.console import Console

    console = Console(record=True, width=250)
    print_summary(console, summary)
    assert (f"{path}:1: field 'output': output must be a string (SFT) or a list [chosen, rejected] (pairs)"
            in console.export_text())
