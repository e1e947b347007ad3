"""The second hostile round (issue 22, items 16 to 18) beyond the catalogue's one-line cases: inspect-data's report,
the stdlib JSON path, the beta rule per loss, and every stage that takes a beta."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli


def test_inspect_data_counts_a_lone_surrogate_as_a_bad_row(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "Q", "chosen": "A \\ud800", "rejected": "B"}\n'
                    '{"prompt": "Q", "chosen": "A", "rejected": "B"}\n', encoding="utf-8")
    code, out, err = run_cli(capsys, "inspect-data", str(data))
    assert code == 2, err
    assert "invalid-utf8" in out and "Traceback" not in err + out
    assert "1 rows fail a check" in out


def test_the_stdlib_parser_refuses_what_orjson_refuses(tmp_path, monkeypatch):
    from dpo_cli.core.errors import DataError
    from dpo_cli.data import readers

    monkeypatch.setattr(readers, "_fast_loads", readers._strict_loads)
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "Q", "chosen": [{"role": "assistant", "content": "\\udfff x"}], "rejected": "B"}\n',
                    encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(readers.iter_records(data))
    assert caught.value.field == "chosen[0].content" and caught.value.line == 1
    # a surrogate pair (an emoji written as two escapes) is one valid character
    data.write_text('{"prompt": "Q", "chosen": "\\ud83d\\ude00", "rejected": "B"}\n', encoding="utf-8")
    assert list(readers.iter_records(data))[0].row["chosen"] == "\U0001F600"


def test_a_lone_surrogate_in_a_key_is_named_without_breaking_the_message(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B", "x\\ud800": 1}\n', encoding="utf-8")
    code, _, err = run_cli(capsys, "convert-data", str(data), "-o", str(tmp_path / "o.jsonl"))
    assert code == 2 and "field ''x\\ud800''" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("stage, recipe_extra, beta, accepted", [
    ("dpo", "", 0, False),
    ("dpo", "  loss_type: sft\n", 0, True),  # the SFT loss alone has no beta
    ("dpo", "  loss_type: [sigmoid, sft]\n  loss_weights: [1.0, 1.0]\n", -0.1, False),
    ("orpo", "", 0, True),  # ORPO's lambda: 0 is plain SFT
    ("orpo", "", -1, False),
    ("simpo", "", -2, False),
    ("cpo", "", 0, False),
    ("rloo", "", 0, True),
    ("rloo", "", -0.01, False),
])
def test_beta_is_refused_where_the_loss_needs_it(write_recipe, tmp_path, stage, recipe_extra, beta, accepted):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.recipe.load import load_recipe

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n")
    reward = "reward:\n  functions: [length]\n" if stage == "rloo" else ""
    path = write_recipe(f"stage: {stage}\nmodel:\n  name_or_path: builtin:tiny-chat\ndata:\n  train: "
                        f"{tmp_path}/train.jsonl\ntrainer:\n  beta: {beta}\n{recipe_extra}{reward}"
                        f"output_dir: {tmp_path}/run\n")
    if accepted:
        assert load_recipe(path).trainer["beta"] == beta
    else:
        with pytest.raises(RecipeError, match="field 'trainer.beta': must"):
            load_recipe(path)


def test_online_dpo_checks_every_beta_of_its_list(write_recipe, tmp_path):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.recipe.load import load_recipe

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Q"}) + "\n")
    path = write_recipe(f"stage: online-dpo\nmodel:\n  name_or_path: builtin:tiny-chat\ndata:\n  train: "
                        f"{tmp_path}/train.jsonl\nreward:\n  functions: [length]\ntrainer:\n  beta: [0.1, -0.1]\n"
                        f"output_dir: {tmp_path}/run\n")
    with pytest.raises(RecipeError, match=r"must be positive \(got -0.1\)"):
        load_recipe(path)


def test_a_pipeline_stage_with_nan_names_the_stage_key(write_recipe, tmp_path):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.recipe.pipeline import load_pipeline

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n")
    path = write_recipe(f"output_dir: {tmp_path}/run\nstages:\n  - name: a\n    stage: dpo\n    model:\n"
                        f"      name_or_path: builtin:tiny-chat\n    data:\n      train: {tmp_path}/train.jsonl\n")
    with pytest.raises(RecipeError) as caught:
        load_pipeline(path, ["a.trainer.beta=.nan"])
    assert str(caught.value) == ("command-line override 'a.trainer.beta=.nan': field 'stages.0.trainer.beta': must be "
                                 "a finite number (got nan)")
    with pytest.raises(RecipeError, match="levels deep"):
        load_pipeline(path, ["a." + ".".join(["x"] * 100) + "=1"])
