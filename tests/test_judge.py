"""Judged win rate: the figures on known numbers, the judge's kind, both orders, bad input, and real tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_cli.core.errors import InputError
from dpo_cli.evidence.judge import (
    LanguageModelJudge,
    combine_orders,
    fill,
    judge_kind,
    length_controlled_win_rate,
    read_template,
    summarise,
    wilson_interval,
)
from helpers import demo_head, run_cli, tiny_dpo_recipe

# --- the figures on known numbers --------------------------------------------------------------------------------------


def test_wilson_interval_on_known_numbers():
    # 7 of 10 with z = 1.96: (0.7 + 0.192) / 1.384 -/+ 0.3086 / 1.384, that is 0.3968 to 0.8922
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.39678, abs=1e-5) and high == pytest.approx(0.89221, abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)  # all wins still leave room below


def test_ties_count_half_in_the_rate_and_the_interval():
    result = summarise([1, 1, 1, 1, 1, 1, 0.5, 0.5, 0, 0], [1.0] * 6 + [0.0, 0.0, -1.0, -1.0], [5] * 10, [5] * 10)
    assert (result["wins"], result["ties"], result["losses"]) == (6, 2, 2)
    assert result["win_rate"] == pytest.approx(0.7)
    assert (result["interval"]["low"], result["interval"]["high"]) == pytest.approx(wilson_interval(7, 10))
    assert result["length_controlled_win_rate"] == pytest.approx(0.7)  # equal lengths: nothing to control for
    assert result["mean_length"] == {"tuned": 5.0, "base": 5.0, "unit": "tokens"}


def test_length_controlled_rate_removes_a_length_effect():
    # longer answers win 3 of 4, shorter ones 1 of 4: all of the advantage is length, so at equal length it is 1/2
    outcomes = [1, 1, 1, 0, 1, 0, 0, 0]
    assert length_controlled_win_rate(outcomes, [12, 12, 12, 12, -12, -12, -12, -12]) == pytest.approx(0.5, abs=1e-6)
    # more prompts where the tuned answer is longer raise the raw rate (7/12), not the length-controlled one
    outcomes = [1] * 6 + [0] * 2 + [1] + [0] * 3
    rate = length_controlled_win_rate(outcomes, [10] * 8 + [-10] * 4)
    assert sum(outcomes) / len(outcomes) == pytest.approx(7 / 12) and rate == pytest.approx(0.5, abs=1e-4)
    # 3 of 4 when longer, 2 of 4 when shorter: the fit is saturated, intercept (logit .75 + logit .5) / 2
    import math

    rate = length_controlled_win_rate([1, 1, 1, 0, 1, 1, 0, 0], [1, 1, 1, 1, -1, -1, -1, -1])
    assert rate == pytest.approx(1 / (1 + math.exp(-math.log(3) / 2)), abs=1e-4)


def test_combine_orders_needs_both_orders_to_agree():
    assert combine_orders(0.4, 1.2) == (1.0, pytest.approx(0.8))
    assert combine_orders(-0.4, -0.2) == (0.0, pytest.approx(-0.3))
    assert combine_orders(2.0, -0.5)[0] == 0.5  # the judge picked A both times: position, not quality
    assert combine_orders(0.0, 1.0)[0] == 0.5


def test_the_judge_lm_is_asked_in_both_orders_and_a_disagreement_is_a_tie():
    asked = []
    judge = object.__new__(LanguageModelJudge)

    def preference(prompt, a, b):  # always prefers answer A: pure position bias
        asked.append((a, b))
        return 1.0

    judge.preference = preference
    rows = judge.margins(["p1", "p2"], ["tuned answer", "same"], ["base answer", "same"])
    assert asked == [("tuned answer", "base answer"), ("base answer", "tuned answer")]  # identical answers not asked
    assert rows[0]["outcome"] == 0.5 and rows[0]["verdicts"] == ["A", "A"]
    assert rows[0]["tuned_first"] == 1.0 and rows[0]["tuned_second"] == -1.0
    assert rows[1]["outcome"] == 0.5 and rows[1]["verdicts"] == ["same answer", "same answer"]
    judge.preference = lambda prompt, a, b: 2.0 if a == "tuned answer" else -1.0  # prefers tuned in both orders
    assert judge.margins(["p"], ["tuned answer"], ["base answer"])[0]["outcome"] == 1.0


def test_templates(tmp_path):
    text, source = read_template(None)
    assert all(p in text for p in ("{prompt}", "{answer_a}", "{answer_b}")) and source.startswith("builtin")
    assert fill("Q {prompt} A {answer_a} B {answer_b}", "x {y}", "1", "2") == "Q x {y} A 1 B 2"
    bad = tmp_path / "t.txt"
    bad.write_text("{prompt} {answer_a}")
    with pytest.raises(InputError, match=r"lacks \{answer_b\}"):
        read_template(str(bad))


# --- the judge's kind, from its configuration ---------------------------------------------------------------------------


def _save_config(folder: Path, tiny_model: Path, **changes) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    for key, value in changes.items():
        setattr(config, key, value)
    config.save_pretrained(folder)
    return str(folder)


def test_judge_kind_comes_from_the_configuration_not_the_name(tiny_model, tmp_path):
    assert judge_kind("builtin:tiny-chat") == "lm"
    reward = _save_config(tmp_path / "lm-looking-name", tiny_model, architectures=["LlamaForSequenceClassification"],
                          num_labels=1)
    assert judge_kind(reward) == "reward"
    neither = _save_config(tmp_path / "reward-model", tiny_model, architectures=["LlamaModel"])
    with pytest.raises(InputError, match="neither a reward model .* nor a causal language model"):
        judge_kind(neither)
    classifier = _save_config(tmp_path / "three", tiny_model, architectures=["LlamaForSequenceClassification"],
                              num_labels=3)
    with pytest.raises(InputError, match="3 labels"):
        judge_kind(classifier)


# --- bad input on the command line --------------------------------------------------------------------------------------

def _cli(args):
    from typer.testing import CliRunner

    from dpo_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def fake_run(tiny_model, tmp_path):
    """A run directory as train leaves it, as far as the checks before any generation look: manifest, recipe, config."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "completed", "stage": "dpo"}))
    (run / "recipe.resolved.yaml").write_text(tiny_dpo_recipe("builtin:demo/train.jsonl", "builtin:demo/eval.jsonl", run))
    shutil.copy(tiny_model / "config.json", run / "config.json")
    return run


def _one_line_exit_2(capsys, args, *words):
    code, out, err = run_cli(capsys, *map(str, args))
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


def test_a_missing_run_is_exit_2(capsys, tmp_path):
    _one_line_exit_2(capsys, ["eval", tmp_path / "nowhere", "--judge", "builtin:tiny-chat"], "not a dpo-cli run")


def test_a_prompts_file_with_no_prompts_is_exit_2(capsys, fake_run, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    _one_line_exit_2(capsys, ["eval", fake_run, "--judge", "builtin:tiny-chat", "--prompts", empty], "no prompts",
                     str(empty))
    empty_data = tmp_path / "rows.jsonl"
    empty_data.write_text("")
    code, _, err = run_cli(capsys, "eval", str(fake_run), "--judge", "builtin:tiny-chat", "--data", str(empty_data))
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_a_judge_that_is_neither_kind_is_exit_2(capsys, fake_run, tiny_model, tmp_path):
    neither = _save_config(tmp_path / "encoder", tiny_model, architectures=["LlamaModel"])
    _one_line_exit_2(capsys, ["eval", fake_run, "--judge", neither, "-n", "2"], "neither a reward model")
    assert "evaluation" not in json.loads((fake_run / "run.json").read_text())  # nothing written


def test_judge_options_without_a_judge_are_exit_2(capsys, fake_run):
    _one_line_exit_2(capsys, ["eval", fake_run, "-n", "3", "--sample"], "-n, --sample only apply with --judge")
    _one_line_exit_2(capsys, ["eval", fake_run, "--judge", "x", "--ref", "y"], "--against")


def test_the_recipe_eval_section_is_checked(write_recipe):
    from dpo_cli.train.recipe_load import load_recipe

    base = tiny_dpo_recipe("builtin:demo/train.jsonl", "builtin:demo/eval.jsonl", "/tmp/x")
    recipe = load_recipe(write_recipe(base + "eval:\n  judge: builtin:tiny-chat\n  n: 4\n"))
    assert recipe.eval.judge == "builtin:tiny-chat" and recipe.eval.n == 4 and recipe.eval.sample is False
    with pytest.raises(InputError, match="eval.*nn"):
        load_recipe(write_recipe(base + "eval:\n  judge: builtin:tiny-chat\n  nn: 4\n"))
    no_eval = base.replace("  eval: builtin:demo/eval.jsonl\n", "")
    with pytest.raises(InputError, match="held-out prompts"):
        load_recipe(write_recipe(no_eval + "eval:\n  judge: builtin:tiny-chat\n"))
    reward = base.replace("stage: dpo", "stage: reward").replace("  beta: 0.1\n", "")
    with pytest.raises(InputError, match="no language model to judge"):
        load_recipe(write_recipe(reward + "eval:\n  judge: builtin:tiny-chat\n"))


# --- real tiny runs ------------------------------------------------------------------------------------------------------


def _subset(folder: Path) -> dict[str, str]:
    return {"train": demo_head("train", 24, folder), "eval": demo_head("eval", 6, folder)}


@pytest.fixture(scope="module")
def judged(tiny_model, tmp_path_factory):
    """A reward model trained by the tiny reward recipe, then a tiny DPO run whose recipe judges it with that model."""
    from conftest import REPO
    from dpo_cli.runner.pipeline import run_stage
    from dpo_cli.train.recipe_load import load_recipe

    folder = tmp_path_factory.mktemp("judge")
    paths = _subset(folder)
    reward = load_recipe(REPO / "recipes/tiny/reward.yaml",
                         [f"output_dir={folder / 'reward'}", f"data.train={paths['train']}",
                          f"data.eval={paths['eval']}", "trainer.num_train_epochs=1"])
    run_stage(reward)
    recipe = folder / "dpo.yaml"
    recipe.write_text(tiny_dpo_recipe(paths["train"], paths["eval"], folder / "dpo")
                      + f"eval:\n  judge: {folder / 'reward'}\n  max_new_tokens: 12\n", encoding="utf-8")
    result = run_stage(load_recipe(recipe))
    return folder, result


@pytest.mark.slow
def test_a_reward_model_judges_a_dpo_run_at_the_end_of_training(judged):
    from dpo_cli.evidence.report import write_report

    folder, result = judged
    manifest = json.loads((folder / "dpo" / "run.json").read_text())
    judge = manifest["evaluation"]["judge"]
    assert manifest["status"] == "completed" and "after" in manifest["evaluation"]  # the held-out figures stay
    assert judge["prompts"] == 6 and judge["wins"] + judge["ties"] + judge["losses"] == 6
    assert judge["judge"]["kind"] == "reward" and judge["against"] == "builtin:tiny-chat"
    assert 0 <= judge["interval"]["low"] <= judge["win_rate"] <= judge["interval"]["high"] <= 1
    assert 0 <= judge["length_controlled_win_rate"] <= 1
    assert judge["settings"] == {"decoding": "greedy", "n": 100, "max_new_tokens": 12, "sample": False,
                                 "temperature": 0.7, "top_p": 0.9, "seed": 0}
    rows = [json.loads(line) for line in (folder / "dpo" / "judge.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["margin"] == pytest.approx(r["score_tuned"] - r["score_base"]) or
                                  r["tuned"] == r["base"] for r in rows)
    assert [r["outcome"] for r in rows].count(1.0) == judge["wins"]
    assert result.manifest["evaluation"]["judge"] == judge  # what the console table shows
    assert "judge_also" not in manifest["evaluation"]
    html = write_report(folder / "dpo").read_text()
    section = html.split('<section id="judge">')[1].split("</section>")[0]
    assert f"{judge['wins']} / {judge['ties']} / {judge['losses']}" in section
    assert f"{judge['win_rate']:.3f} (95% Wilson interval {judge['interval']['low']:.3f}" in section
    assert f"{judge['length_controlled_win_rate']:.3f}" in section


@pytest.mark.slow
def test_the_same_seed_gives_the_same_numbers_twice(judged):
    folder, _ = judged
    args = ["eval", folder / "dpo", "--judge", folder / "reward", "-n", "4", "--max-new-tokens", "10", "--sample",
            "--seed", "7", "--json"]
    first, second = _cli(args), _cli(args)
    assert first.exit_code == 0, first.output
    a, b = json.loads(first.output)["judge"], json.loads(second.output)["judge"]
    assert a == b and a["settings"]["decoding"] == "sampled" and a["settings"]["seed"] == 7 and a["prompts"] == 4
    assert json.loads((folder / "dpo" / "run.json").read_text())["evaluation"]["judge"] == a


@pytest.mark.slow
def test_a_local_judge_lm_asks_both_orders(judged, tmp_path):
    folder, _ = judged
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 plus 2?\nName a colour.\nSay hello.\n")
    result = _cli(["eval", folder / "dpo", "--judge", "builtin:tiny-chat", "--prompts", prompts,
                   "--max-new-tokens", "8", "--also-against", folder / "dpo"])
    assert result.exit_code == 0, result.output
    assert "judged win rate" in result.output and "wins / ties / losses" in result.output
    evaluation = json.loads((folder / "dpo" / "run.json").read_text())["evaluation"]
    judge, itself = evaluation["judge"], evaluation["judge_also"][0]
    # against itself every answer is the same: all ties, none asked, in its own file
    assert itself["against"] == str(folder / "dpo") and (itself["ties"], itself["prompts"]) == (3, 3)
    assert itself["rows_file"] == "judge-also-1.jsonl" and (folder / "dpo" / "judge-also-1.jsonl").is_file()
    assert judge["judge"]["kind"] == "lm" and judge["judge"]["template"].startswith("builtin")
    assert judge["prompts"] == 3 and judge["prompts_source"] == str(prompts)
    rows = [json.loads(line) for line in (folder / "dpo" / "judge.jsonl").read_text().splitlines()]
    for row in rows:
        if row["tuned"] == row["base"]:
            continue
        # both orders were asked and scored; the outcome is what the two orders agree on, else a tie
        assert row["tuned_first"] != 0.0 and row["tuned_second"] != 0.0 and len(row["verdicts"]) == 2
        assert row["outcome"] == combine_orders(row["tuned_first"], row["tuned_second"])[0]


def test_a_recipe_judge_that_cannot_judge_stops_before_training(capsys, write_recipe, tmp_path, tiny_model):
    base = tiny_dpo_recipe("builtin:demo/train.jsonl", "builtin:demo/eval.jsonl", tmp_path / "out")
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n")
    neither = _save_config(tmp_path / "encoder", tiny_model, architectures=["LlamaModel"])
    for section, message in ((f"eval:\n  judge: builtin:tiny-chat\n  prompts: {empty}\n", f"{empty}: no prompts"),
                             (f"eval:\n  judge: {neither}\n", "neither a reward model"),
                             (f"eval:\n  judge: {neither.replace('encoder', 'rm')}\n", "rm")):
        _one_line_exit_2(capsys, ["train", write_recipe(base + section)], message)
        assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_the_run_summary_of_a_run_without_a_judge_names_its_directory(tmp_path):
    """The judge's lines come first; the run's own lines after them still name the run (not the judge's result)."""
    from io import StringIO

    from rich.console import Console

    from dpo_cli.evidence.tables import print_run_summary
    from dpo_cli.train.manifest import RunResult

    printed = StringIO()
    print_run_summary(Console(file=printed, width=200), RunResult(tmp_path, {"global_step": 3, "plots": ["l.png"]}))
    assert f"curves in {tmp_path / 'plots'}" in printed.getvalue()
    assert f"done: 3 steps; model, run.json and metrics.jsonl in {tmp_path}" in printed.getvalue()
