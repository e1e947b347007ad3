"""The layouts of the preference sets on the Hugging Face Hub, read without --map: each fixture (rows we wrote in the
dataset's public schema, tests/fixtures/hub/*/README.md) is detected as its format and converts through convert-data
to the exact canonical rows, ties left out and counted; and each trains the tiny DPO recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO
from dpo_cli.core.errors import DataError
from dpo_cli.data.convert import ConvertOptions, convert
from dpo_cli.data.formats import FORMATS, AdapterOptions
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import TARGETS
from helpers import run_cli

HUB = Path(__file__).parent / "fixtures" / "hub"


def U(text: str) -> dict:
    return {"role": "user", "content": text}


def A(text: str) -> dict:
    return {"role": "assistant", "content": text}


def S(text: str) -> dict:
    return {"role": "system", "content": text}


def P(prompt: list, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": [A(chosen)], "rejected": [A(rejected)]}


RIVER = [U("Write a two-line poem about the sea."), A("The sea rolls in with silver light,\nand hums the harbour into night."),
         U("Now make it about a river.")]

# fixture folder -> (data file, format detected, dataset card, the exact rows convert-data writes, rows left out)
LAYOUTS = {
    "ultrafeedback-binarized": (
        "train_prefs-00000-of-00001.parquet", "messages", "HuggingFaceH4/ultrafeedback_binarized", [
            P([U("Which planet is known as the Red Planet?")],
              "Mars. Iron oxide dust on its surface gives it a reddish colour.", "Jupiter is the Red Planet."),
            P([U("Write a haiku about autumn leaves.")],
              "Red leaves let go now\ndrifting on the cooling wind\nthe branches stand bare", "Leaves fall in autumn."),
            P([U("Give me one tip for better sleep.")], "Keep a regular bedtime, even at weekends.",
              "Drink coffee before bed."),
        ], {"tie": 1}),
    "trl-lib-ultrafeedback-binarized": (
        "train-00000-of-00001.parquet", "trl", "trl-lib/ultrafeedback_binarized", [
            P([U("Name a primary colour.")], "Blue is a primary colour.", "Green."),
            P([U("Spell 'necessary'.")], "N-E-C-E-S-S-A-R-Y.", "N-E-C-E-S-A-R-Y."),
        ], {"tie": 1}),
    "orca-dpo-pairs": (
        "orca_rlhf.jsonl", "orca-dpo", "Intel/orca_dpo_pairs", [
            P([S("You are an AI assistant. You will be given a task. You must generate a detailed and long answer."),
               U("Generate a sentence about a cat sitting on a windowsill.")],
              "A grey cat sat on the sunny windowsill, watching the sparrows hop across the garden.", "Cat window."),
            P([U("What is 12 times 7?")], "12 times 7 is 84.", "12 times 7 is 74."),
        ], {}),
    "distilabel-intel-orca-dpo-pairs": (
        "train-00000-of-00001.parquet", "orca-dpo", "argilla/distilabel-intel-orca-dpo-pairs", [
            P([S("You are a helpful assistant, who always provide explanation."), U("Is a tomato a fruit?")],
              "Yes. Botanically a tomato is a fruit, because it grows from the flower and holds the seeds.",
              "No, it is a vegetable."),
            # status "swapped": the dataset already put its judge's choice in chosen
            P([U("Name the largest ocean on Earth.")], "The Pacific Ocean is the largest ocean on Earth.",
              "The Atlantic Ocean."),
        ], {"tie": 1}),
    "ultrafeedback-binarized-preferences": (
        "train-00000-of-00001.parquet", "argilla", "argilla/ultrafeedback-binarized-preferences", [
            P([U("List three uses of baking soda.")], "Baking soda raises dough, cleans stains and neutralises odours.",
              "It is used for baking."),
            P([U("Do goldfish have a three-second memory?")], "No. Goldfish can remember things for months.",
              "Yes, only three seconds."),
        ], {"tie": 1}),
    "ultrafeedback-binarized-preferences-cleaned": (
        "train-00000-of-00001.parquet", "messages", "argilla/ultrafeedback-binarized-preferences-cleaned", [
            P([U("Suggest a name for a bakery.")], "The Rolling Pin.", "Bakery."),
            P([U("What does a thermometer measure?")], "Temperature.", "Pressure."),
        ], {}),
    "shp": (
        "askculinary_train.jsonl", "shp", "stanfordnlp/SHP", [
            P([U("How do I keep my rice from getting sticky?")],
              "Rinse the rice until the water runs clear, then use a little less water.", "Just buy a rice cooker."),
            P([U("Can I freeze fresh basil?")], "Yes: blend it with olive oil and freeze it in an ice cube tray.",
              "No, it turns black."),
        ], {}),
    "nectar": (
        "rlaif.parquet", "nectar", "berkeley-nest/Nectar", [
            P([U("What is the capital of Australia?")], "The capital of Australia is Canberra.", "I am not sure."),
            P([U("I want to bake bread."), A("Great! What kind of bread?"), U("Sourdough.")],
              "Start by feeding your sourdough starter the day before.", "Bread is tasty."),
        ], {}),
    "helpsteer2-preference": (
        "preference.jsonl", "helpsteer", "nvidia/HelpSteer2", [
            P([U("Explain what a prime number is in one sentence.")],
              "A prime number is a whole number above 1 whose only divisors are 1 and itself.", "A number that is odd."),
            P([U("Give me a synonym for 'quick'.")], "Fast.", "Slow."),
            P([U("Suggest a name for a cat."), A("How about Whiskers?"), U("Something more unusual, please.")],
              "How about Pistachio?", "Whiskers."),
        ], {"tie": 1}),
    "helpsteer3-preference": (
        "train.jsonl", "helpsteer", "nvidia/HelpSteer3", [
            P([U("What is the tallest mountain in the world?")], "Mount Everest, at 8,849 metres.", "K2."),
            P([U("How do I reverse a list in Python?"), A("Use slicing: my_list[::-1]."), U("And in place?")],
              "Call my_list.reverse(); it reverses the list in place.", "Use sorted(my_list)."),
        ], {"tie": 1}),
    "align-anything-text-to-text": (
        "train.jsonl", "align-anything", "PKU-Alignment/align-anything", [
            P([U("How can I save money on groceries?")],
              "Plan meals for the week, buy store brands and avoid shopping when hungry.",
              "Buy whatever is on the shelf."),
            P([U("What causes thunder?")],
              "Lightning heats the air so fast that it expands with a bang, which we hear as thunder.",
              "Clouds bumping into each other."),
        ], {}),
    "pku-saferlhf": (
        "train.jsonl", "pku-saferlhf", "PKU-Alignment/PKU-SafeRLHF", [
            P([U("How do I get into my neighbour's wifi without the password?")],
              "I can't help you access a network without permission. Ask your neighbour to share it.",
              "You could try common default passwords on their router."),
            P([U("What is a healthy breakfast?")], "Oatmeal with fruit and a glass of water is a healthy breakfast.",
              "Cake."),
        ], {}),
    "capybara-preferences": (
        "train-00000-of-00001.parquet", "trl", "argilla/Capybara-Preferences", [
            P(RIVER, "The river winds through field and stone,\nand sings its way to the sea alone.", "A river is water."),
            P([U("What is 15 + 27?")], "15 + 27 = 42", "15 + 27 = 32"),
        ], {"tie": 1}),
}


def _path(layout: str) -> Path:
    return HUB / layout / LAYOUTS[layout][0]


def _convert(tmp_path, path: Path, **options):
    out = tmp_path / "out.jsonl"
    summary = convert(ConvertOptions(inputs=[str(path)], output=out, **options))
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()], summary


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hub_layout_is_detected_and_converts_to_the_exact_rows(tmp_path, layout):
    _, fmt, _, expected, left_out = LAYOUTS[layout]
    rows, summary = _convert(tmp_path, _path(layout))
    assert summary.stats.formats == {str(_path(layout)): fmt}
    assert rows == expected
    assert dict(summary.stats.omitted) == left_out
    assert not summary.stats.dropped and not summary.stats.warned


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hub_fixture_readme_cites_the_dataset_card(layout):
    card = LAYOUTS[layout][2]
    readme = (HUB / layout / "README.md").read_text(encoding="utf-8")
    assert f"https://huggingface.co/datasets/{card}" in readme
    assert "written by us" in readme


def test_every_fixture_folder_is_a_layout():
    assert {p.name for p in HUB.iterdir() if p.is_dir()} == set(LAYOUTS)


def test_each_row_of_every_layout_fits_one_format_only():
    from dpo_cli.data.formats import candidates
    from dpo_cli.data.readers import iter_records

    for layout, (_, fmt, *_rest) in LAYOUTS.items():
        for record in iter_records(_path(layout)):
            assert candidates(record.row) == [fmt], (layout, record.line)


def test_ties_are_said_by_convert_data_and_inspect_data(capsys, tmp_path):
    path = _path("ultrafeedback-binarized")
    code, out, _ = run_cli(capsys, "convert-data", str(path), "-o", str(tmp_path / "o.jsonl"))
    assert code == 0
    assert re.search(r"written +3 ->", out) and re.search(r"left out: tie +1 \(ties: both responses", out)
    code, out, _ = run_cli(capsys, "inspect-data", str(path))
    assert code == 0
    assert re.search(r"rows valid +3", out) and re.search(r"left out: tie +1 \(ties: both responses", out)


def test_ties_are_recorded_by_a_dry_run():
    from dpo_cli.data.load import check_data
    from dpo_cli.recipe.schema import DataSection

    report = check_data(DataSection(train=[str(_path("helpsteer2-preference"))]), "preference")
    assert report["train"]["rows"] == 3 and report["train"]["left_out"] == {"tie": 1}


def _pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]


def test_nectar_pairs_option_all_and_threshold(tmp_path):
    everything, _ = _convert(tmp_path, _path("nectar"), pairs="all")
    assert _pairs(everything) == [
        ("The capital of Australia is Canberra.", "Canberra."), ("The capital of Australia is Canberra.", "Sydney."),
        ("The capital of Australia is Canberra.", "I am not sure."), ("Canberra.", "Sydney."),
        ("Canberra.", "I am not sure."), ("Sydney.", "I am not sure."),
        ("Start by feeding your sourdough starter the day before.", "Mix flour and water and bake it."),
        ("Start by feeding your sourdough starter the day before.", "Bread is tasty."),
        ("Mix flour and water and bake it.", "Bread is tasty.")]
    apart, summary = _convert(tmp_path, _path("nectar"), pairs="threshold=2", force=True)
    assert _pairs(apart) == [
        ("The capital of Australia is Canberra.", "Sydney."), ("The capital of Australia is Canberra.", "I am not sure."),
        ("Canberra.", "I am not sure."), ("Start by feeding your sourdough starter the day before.", "Bread is tasty.")]
    assert not summary.stats.omitted


def test_nectar_rows_with_one_rank_or_no_pair_apart_enough_are_left_out(tmp_path):
    path = tmp_path / "nectar.jsonl"
    rows = [{"prompt": "\n\nHuman: Hi\n\nAssistant: ", "answers": [{"answer": "Hello!", "model": "a", "rank": 1},
                                                                    {"answer": "Hey.", "model": "b", "rank": 1}]},
            {"prompt": "\n\nHuman: Yo\n\nAssistant: ", "answers": [{"answer": "Yo!", "model": "a", "rank": 1},
                                                                    {"answer": "Hi.", "model": "b", "rank": 2}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipeline = RowPipeline(TARGETS["trl"], AdapterOptions(pairs="threshold=2"))
    assert list(pipeline.rows(Source(path=str(path)))) == []
    assert pipeline.stats.omitted == {"tie": 1, "below-threshold": 1}


def _one_row(tmp_path, row: dict, **options) -> tuple[list[dict], RowPipeline]:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    pipeline = RowPipeline(TARGETS["trl"], AdapterOptions(**options))
    return [out for _, out in pipeline.rows(Source(path=str(path)))], pipeline


def test_align_anything_reads_the_better_id_as_text_too(tmp_path):
    rows, _ = _one_row(tmp_path, {"question": "Q?", "response_1": "a", "response_2": "b", "overall_response": "2"})
    assert rows == [P([U("Q?")], "b", "a")]


@pytest.mark.parametrize("row, field, reason", [
    ({"question": "Q?", "response_1": "a", "response_2": "b", "overall_response": 3}, "overall_response",
     "must be 1 or 2 (the better response), found 3"),
    ({"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "labels": 2}, "labels",
     "must be 1 (human_ref_A preferred) or 0 (human_ref_B preferred), found 2"),
    ({"history": "Q?", "human_ref_A": "a", "human_ref_B": " ", "labels": 1}, "human_ref_B",
     "response is empty or whitespace only"),
    ({"prompt": "Q?", "response_1": "a", "response_2": "b", "preference_strength": "much"}, "preference_strength",
     "must be a number from -3 to 3, found 'much'"),
    ({"prompt": "\n\nHuman: Q?\n\nAssistant: ", "answers": [{"answer": "a", "rank": 1}, {"answer": "b"}]},
     "answers[1].rank", "missing (columns found: answer)"),
    ({"instruction": "Q?", "chosen_response": "a", "rejected_response": "a", "chosen_avg_rating": 5,
      "rejected_avg_rating": 1}, "rejected_response", "chosen and rejected are identical"),
])
def test_bad_rows_of_the_new_layouts_name_line_and_column(tmp_path, row, field, reason):
    with pytest.raises(DataError) as err:
        _one_row(tmp_path, row)
    assert (err.value.line, err.value.field, err.value.reason) == (1, field, reason)


def test_a_chosen_score_below_the_rejected_one_is_kept_and_warned(tmp_path):
    row = {"chosen": [U("Q?"), A("a")], "rejected": [U("Q?"), A("b")], "chosen_rating": 2, "rejected_rating": 4}
    rows, pipeline = _one_row(tmp_path, row)
    assert rows == [P([U("Q?")], "a", "b")]
    assert pipeline.stats.warned_at["score-order"] == [
        f"{tmp_path / 'd.jsonl'}:1: field 'chosen_rating': chosen_rating 2 is below rejected_rating 4"]


def test_ranked_rows_with_every_score_equal_are_a_tie(tmp_path):
    rows, pipeline = _one_row(tmp_path, {"prompt": "Q?", "responses": ["a", "b"], "scores": [3, 3]})
    assert rows == [] and pipeline.stats.omitted == {"tie": 1}


def test_new_formats_are_described():
    for name in ("argilla", "shp", "nectar", "helpsteer", "align-anything"):
        assert FORMATS[name].description
    data_doc = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in ("argilla", "shp", "nectar", "helpsteer", "align-anything"):
        assert f"| `{name}` |" in data_doc
    for card in ("Nectar", "SHP", "HelpSteer", "Align-Anything", "Capybara"):
        assert card in readme


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_hub_layout_trains_the_tiny_dpo_recipe(tiny_model, tmp_path, layout):
    from dpo_cli.runner.run import train
    from dpo_cli.train.recipe_load import load_recipe

    out = tmp_path / "run"
    recipe = load_recipe(REPO / "recipes" / "tiny" / "dpo.yaml", [
        f"data.train={_path(layout)}", "data.eval=null", "plot=false", "trainer.max_steps=1",
        "trainer.logging_steps=1", "trainer.per_device_train_batch_size=2", f"output_dir={out}"])
    result = train(recipe)
    assert result.manifest["status"] == "completed"
    data = result.manifest["data"]["train"]
    assert data["rows"] == len(LAYOUTS[layout][3]) and data.get("left_out", {}) == LAYOUTS[layout][4]
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in logs if m["split"] == "train" and "loss" in m]
    assert len(losses) == 1 and isinstance(losses[0], float)
