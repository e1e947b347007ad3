"""Every format adapter: project-written fixtures in, the exact canonical rows out; detection; round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_cli.core.errors import DataError
from dpo_cli.data.formats import FORMATS, AdapterOptions
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import KINDS, TARGETS

FIXTURES = Path(__file__).parent / "fixtures" / "data"

# fixture -> (detected format, output shape used for the expected file)
CASES = {
    "trl_explicit": ("trl", "trl"),
    "trl_implicit": ("trl", "trl"),
    "trl_standard": ("trl", "trl"),
    "alpaca": ("alpaca", "trl"),
    "sharegpt": ("sharegpt", "trl"),
    "messages": ("messages", "trl"),
    "hh_rlhf": ("hh-rlhf", "trl"),
    "pku_saferlhf": ("pku-saferlhf", "trl"),
    "orca_dpo": ("orca-dpo", "trl"),
    "ranked": ("ranked", "trl"),
    "kto": ("kto", "kto"),
    "prompt_only": ("prompt-only", "prompt-only"),
}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def convert_rows(path, target="trl", **source) -> tuple[list[dict], RowPipeline]:
    pipeline = RowPipeline(TARGETS[target], AdapterOptions(**source.pop("options", {})))
    rows = [row for _, row in pipeline.rows(Source(path=str(path), **source))]
    return rows, pipeline


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_converts_to_expected_rows(name):
    fmt, target = CASES[name]
    rows, pipeline = convert_rows(FIXTURES / f"{name}.jsonl", target)
    assert pipeline.stats.formats == {str(FIXTURES / f"{name}.jsonl"): fmt}
    assert rows == _read(FIXTURES / "expected" / f"{name}.jsonl")


@pytest.mark.parametrize("name", sorted(CASES))
def test_forced_format_gives_the_same_rows(name):
    fmt, target = CASES[name]
    rows, _ = convert_rows(FIXTURES / f"{name}.jsonl", target, format=fmt)
    assert rows == _read(FIXTURES / "expected" / f"{name}.jsonl")


def test_every_registered_format_has_a_fixture_or_kind_test():
    from test_data_hub_layouts import LAYOUTS  # the Hub's preference sets, in their public schemas
    from test_data_images import LAYOUTS as IMAGE_LAYOUTS  # rows with images, in their public schemas
    from test_data_real import REAL  # real files and files in other tools' public schemas

    covered = ({fmt for fmt, _ in CASES.values()} | set(REAL.values()) | {fmt for _, fmt, *_ in LAYOUTS.values()}
               | {fmt for _, _, fmt, _ in IMAGE_LAYOUTS.values()} | {"prompt-completion"})
    assert covered == set(FORMATS)


def test_alpaca_history_and_system_become_earlier_turns():
    rows, _ = convert_rows(FIXTURES / "alpaca.jsonl")
    assert [t["role"] for t in rows[1]["prompt"]] == ["system", "user", "assistant", "user"]
    assert rows[0]["prompt"][0]["content"] == "Translate to French.\nGood morning"


def test_pku_safer_preference_picks_the_safe_response():
    rows, _ = convert_rows(FIXTURES / "pku_saferlhf.jsonl", options={"preference": "safer"})
    assert rows[0]["chosen"][0]["content"].startswith("I can't help")
    assert rows[0]["rejected"][0]["content"] == "Use a tension wrench and a pick."


def test_ranked_pairs_modes():
    all_pairs, _ = convert_rows(FIXTURES / "ranked.jsonl", options={"pairs": "all"})
    # scores 7, 1, 9 -> 3 ordered pairs, plus the 2-response row -> 1
    assert len(all_pairs) == 4
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in all_pairs[:3]} == {
        ("Banana, a yellow fruit.", "Apple."), ("Banana, a yellow fruit.", "Rock."), ("Apple.", "Rock.")}
    threshold, _ = convert_rows(FIXTURES / "ranked.jsonl", options={"pairs": "threshold=3"})
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in threshold[:2]} == {
        ("Banana, a yellow fruit.", "Rock."), ("Apple.", "Rock.")}
    assert len(threshold) == 2  # ranks 1 vs 2 differ by 1 < 3


def test_ultrafeedback_scores_in_the_wrong_order_are_reported_not_dropped():
    rows, pipeline = convert_rows(FIXTURES / "messages.jsonl")
    assert len(rows) == 4
    assert pipeline.stats.warned == {"score-order": 1}
    assert pipeline.stats.warned_at["score-order"] == [
        f"{FIXTURES / 'messages.jsonl'}:3: field 'score_chosen': score_chosen 4.0 is below score_rejected 5.0"]


def test_to_kto_unpairs_chosen_true_rejected_false():
    rows, _ = convert_rows(FIXTURES / "trl_explicit.jsonl", "kto")
    assert [r["label"] for r in rows] == [True, False, True, False]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "4"}]
    assert rows[1]["completion"] == [{"role": "assistant", "content": "5"}]


def test_column_map_renames_before_detection(tmp_path):
    path = tmp_path / "se.jsonl"
    path.write_text(json.dumps({"question": "Q?", "response_j": "good", "response_k": "bad"}) + "\n")
    rows, pipeline = convert_rows(path, columns={"prompt": "question", "chosen": "response_j",
                                                 "rejected": "response_k"})
    assert rows == [{"prompt": "Q?", "chosen": "good", "rejected": "bad"}]
    assert pipeline.stats.formats[str(path)] == "trl"


def _write(tmp_path, *rows) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ambiguous_detection_lists_the_candidates(tmp_path):
    path = _write(tmp_path, {"prompt": "p", "instruction": "i", "chosen": "a", "rejected": "b"})
    with pytest.raises(DataError) as err:
        convert_rows(path)
    assert "fit several formats: trl, alpaca" in str(err.value)
    assert err.value.line == 1
    rows, _ = convert_rows(path, format="alpaca")
    assert rows[0]["prompt"] == [{"role": "user", "content": "i"}]


def test_undetectable_columns_say_how_to_fix(tmp_path):
    path = _write(tmp_path, {"query": "q", "good": "a", "bad": "b"})
    with pytest.raises(DataError) as err:
        convert_rows(path)
    message = str(err.value)
    assert f"{path}:1" in message and "bad, good, query" in message and "--map" in message


def test_implicit_prompt_is_split_at_turns_never_characters(tmp_path):
    # the two answers share a character prefix ("The answer is ") but that is not a prompt
    path = _write(tmp_path, {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content":
                                                                                 "The answer is 4"}],
                             "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content":
                                                                                 "The answer is 5"}]})
    rows, _ = convert_rows(path)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Q"}]
    assert rows[0]["chosen"][0]["content"] == "The answer is 4"


def test_kinds_for_stages(tmp_path):
    pair = FIXTURES / "trl_explicit.jsonl"
    sft, _ = convert_rows_kind(pair, "sft")
    assert sft[0] == {"messages": [{"role": "user", "content": "What is 2+2?"},
                                   {"role": "assistant", "content": "4"}]}
    prompts, _ = convert_rows_kind(pair, "prompt")
    assert prompts[0] == {"prompt": [{"role": "user", "content": "What is 2+2?"}]}
    kto_sft, _ = convert_rows_kind(FIXTURES / "kto.jsonl", "sft")
    assert len(kto_sft) == 1  # the undesirable completion is not imitated
    text_sft, _ = convert_rows_kind(FIXTURES / "trl_standard.jsonl", "sft")
    assert text_sft[0] == {"prompt": "The sky is", "completion": " blue."}
    conv = _write(tmp_path, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    rows, pipeline = convert_rows_kind(conv, "sft")
    assert pipeline.stats.formats[str(conv)] == "conversation" and rows[0]["messages"][1]["content"] == "yo"
    with pytest.raises(DataError, match="cannot become preference pairs"):
        convert_rows_kind(conv, "preference")


def convert_rows_kind(path, kind):
    pipeline = RowPipeline(KINDS[kind])
    return [row for _, row in pipeline.rows(Source(path=str(path)))], pipeline


@pytest.mark.parametrize("name", ["trl_explicit", "alpaca", "orca_dpo", "hh_rlhf", "trl_standard"])
def test_round_trip_canonical_to_alpaca_and_back_is_identity(tmp_path, name):
    canonical = _read(FIXTURES / "expected" / f"{name}.jsonl")
    source = tmp_path / "canonical.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in canonical), encoding="utf-8")
    as_alpaca, _ = convert_rows(source, "alpaca")
    alpaca_file = tmp_path / "alpaca.jsonl"
    alpaca_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in as_alpaca), encoding="utf-8")
    back, pipeline = convert_rows(alpaca_file)
    assert pipeline.stats.formats[str(alpaca_file)] == "alpaca"
    if name == "trl_standard":  # text prompts come back as one user turn
        canonical = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                      "chosen": [{"role": "assistant", "content": r["chosen"]}],
                      "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in canonical]
    assert back == canonical


def test_round_trip_through_sharegpt_is_identity(tmp_path):
    canonical = _read(FIXTURES / "expected" / "sharegpt.jsonl")
    source = _write(tmp_path, *canonical)
    as_sharegpt, _ = convert_rows(source, "sharegpt")
    target = tmp_path / "sg.jsonl"
    target.write_text("".join(json.dumps(r) + "\n" for r in as_sharegpt))
    back, _ = convert_rows(target)
    assert back == canonical


def test_text_output_refuses_prompts_it_cannot_hold(tmp_path):
    rows, _ = convert_rows(FIXTURES / "orca_dpo.jsonl", "text", limit=None, where="question == '2+3?'")
    assert rows == [{"prompt": "2+3?", "chosen": "5", "rejected": "6"}]
    with pytest.raises(DataError) as err:
        convert_rows(FIXTURES / "orca_dpo.jsonl", "text")
    assert err.value.line == 1 and err.value.field == "prompt" and "system message" in str(err.value)
