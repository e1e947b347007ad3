"""Pipelines: references, their errors (unknown stage, cycle, order), overrides per stage, and a short sft -> dpo run."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from dpo_cli.core.errors import RecipeError
from dpo_cli.runner.pipeline import run_pipeline
from dpo_cli.train.recipe_pipeline import load_pipeline

STAGE = """\
  - name: {name}
    stage: sft
    model:
      name_or_path: {model}
    data: {{train: builtin:demo/train.jsonl}}
    trainer: {{max_steps: 1, save_strategy: "no"}}
"""


def _pipeline(write_recipe, tmp_path, *stages: tuple[str, str]):
    text = f"output_dir: {tmp_path / 'p'}\nstages:\n" + "".join(STAGE.format(name=n, model=m) for n, m in stages)
    return write_recipe(text, "pipe.yaml")


def test_references_resolve_to_each_stages_output_dir(write_recipe, tmp_path):
    pipeline = load_pipeline(_pipeline(write_recipe, tmp_path, ("a", "builtin:tiny-chat"), ("b", "${a.output_dir}"),
                                       ("c", "${ b.output_dir }")))
    a, b, c = pipeline.stages
    assert a.recipe.output_dir == str(tmp_path / "p" / "a")
    assert b.recipe.model.name_or_path == str(tmp_path / "p" / "a") and b.needs == ["a"]
    assert c.recipe.model.name_or_path == str(tmp_path / "p" / "b") and c.needs == ["b"]


def test_reference_to_an_unknown_stage(write_recipe, tmp_path):
    path = _pipeline(write_recipe, tmp_path, ("sft", "builtin:tiny-chat"), ("dpo", "${stf.output_dir}"))
    with pytest.raises(RecipeError) as err:
        load_pipeline(path)
    message = str(err.value)
    assert "pipe.yaml:12: field 'stages.1.model.name_or_path'" in message
    assert "${stf.output_dir} refers to no stage named 'stf'; did you mean 'sft'?" in message
    assert "the stages are: sft, dpo" in message


def test_a_cycle_is_refused_and_shown(write_recipe, tmp_path):
    path = _pipeline(write_recipe, tmp_path, ("a", "${b.output_dir}"), ("b", "${a.output_dir}"))
    with pytest.raises(RecipeError, match=r"pipe.yaml:3: field 'stages.0.name': stages refer to each other in a "
                                          r"cycle: a -> b -> a"):
        load_pipeline(path)
    with pytest.raises(RecipeError, match="cycle: a -> a"):
        load_pipeline(_pipeline(write_recipe, tmp_path, ("a", "${a.output_dir}")))


def test_a_stage_cannot_use_a_later_ones_output(write_recipe, tmp_path):
    path = _pipeline(write_recipe, tmp_path, ("a", "${b.output_dir}"), ("b", "builtin:tiny-chat"))
    with pytest.raises(RecipeError, match="stage 'a' uses \\$\\{b.output_dir\\} but 'b' runs after it"):
        load_pipeline(path)


def test_only_output_dir_can_be_referred_to(write_recipe, tmp_path):
    path = _pipeline(write_recipe, tmp_path, ("a", "builtin:tiny-chat"), ("b", "${a.model}"))
    with pytest.raises(RecipeError, match="can only be referred to by its output_dir"):
        load_pipeline(path)


def test_stage_errors_point_into_the_pipeline_file(write_recipe, tmp_path):
    text = (f"output_dir: {tmp_path}\nstages:\n  - name: a\n    stage: sft\n    model: {{name_or_path: x}}\n"
            "    data: {train: t.jsonl}\n    trainer: {learning_rat: 0.1}\n")
    with pytest.raises(RecipeError, match=r"pipe.yaml:7: field 'stages.0.trainer.learning_rat': SFTConfig has no "
                                          r"field 'learning_rat'; did you mean 'learning_rate'"):
        load_pipeline(write_recipe(text, "pipe.yaml"))


@pytest.mark.parametrize("extra, message", [
    ("  - name: a\n    stage: sft\n", "two stages are named 'a'"),
    ("  - name: 'b c'\n", "each stage needs a name"),
    ("  - name: b\n    output_dir: x\n", "set output_dir once, at the top of the pipeline"),
])
def test_names_and_output_dirs(write_recipe, tmp_path, extra, message):
    path = _pipeline(write_recipe, tmp_path, ("a", "builtin:tiny-chat"))
    path.write_text(path.read_text() + extra)
    with pytest.raises(RecipeError, match=message):
        load_pipeline(path)


def test_overrides_address_a_stage_by_name(write_recipe, tmp_path):
    path = _pipeline(write_recipe, tmp_path, ("a", "builtin:tiny-chat"), ("b", "${a.output_dir}"))
    pipeline = load_pipeline(path, ["b.trainer.max_steps=7", f"output_dir={tmp_path / 'q'}"])
    assert pipeline.stages[1].recipe.trainer["max_steps"] == 7
    assert pipeline.stages[1].recipe.model.name_or_path == str(tmp_path / "q" / "a")
    with pytest.raises(RecipeError, match="start with a stage name \\(a, b\\)"):
        load_pipeline(path, ["trainer.max_steps=2"])
    with pytest.raises(RecipeError, match="command-line override 'b.trainer.beta=0.1'.*SFTConfig has no field 'beta'"):
        load_pipeline(path, ["b.trainer.beta=0.1"])


def test_a_pipeline_file_is_not_a_stage_recipe():
    from dpo_cli.train.recipe_load import load_recipe

    with pytest.raises(RecipeError, match="this file is a pipeline"):
        load_recipe(REPO / "recipes" / "tiny" / "pipeline-sft-dpo.yaml")


@pytest.mark.slow
def test_sft_then_dpo_runs_and_a_second_run_skips_both(tiny_model, tmp_path, capsys):
    path = REPO / "recipes" / "tiny" / "pipeline-sft-dpo.yaml"
    overrides = [f"output_dir={tmp_path}", "sft.trainer.max_steps=2", "dpo.trainer.max_steps=2",
                 "dpo.data.eval={path: builtin:demo/eval.jsonl, limit: 8}", "sft.plot=false", "dpo.plot=false"]
    def said() -> list[str]:  # what the pipeline told the user about its stages
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage ")]

    results = run_pipeline(load_pipeline(path, overrides))
    assert [r.output_dir for r in results] == [tmp_path / "sft", tmp_path / "dpo"]
    dpo_run = json.loads((tmp_path / "dpo" / "run.json").read_text())
    assert dpo_run["status"] == "completed" and "evaluation" in dpo_run
    recorded = (tmp_path / "dpo" / "recipe.resolved.yaml").read_text()
    assert f"name_or_path: {tmp_path / 'sft'}" in recorded  # the reference, resolved

    said()
    assert run_pipeline(load_pipeline(path, overrides)) == []
    assert said() == [f"stage sft (sft): complete in {tmp_path / 'sft'}, skipped",
                    f"stage dpo (dpo): complete in {tmp_path / 'dpo'}, skipped"]

    # a changed downstream stage trains again (into its non-empty directory only with overwrite)
    said()
    changed = load_pipeline(path, overrides[:-1] + ["dpo.trainer.max_steps=1"])
    run_pipeline(changed, overwrite=True)
    notes = said()
    assert notes[0].endswith("skipped") and notes[1].startswith("stage dpo (dpo): training into")


ITERATIVE = REPO / "recipes" / "tiny" / "pipeline-iterative-dpo.yaml"


def test_a_reference_may_be_followed_by_a_path_and_yaml_aliases_stay_per_stage(tmp_path):
    pipeline = load_pipeline(ITERATIVE, [f"output_dir={tmp_path}", "round2-pairs.sampling.temperature=0.5"])
    stages = {s.name: s for s in pipeline.stages}
    assert stages["round1-dpo"].recipe.data.train == [str(tmp_path / "round1-pairs" / "pairs.jsonl")]
    assert stages["round1-dpo"].needs == ["sft", "round1-pairs"]
    assert stages["round2-pairs"].needs == ["round1-dpo", "rm"]
    # every pairs stage shares one YAML anchor for sampling:, yet an override reaches the one it names
    assert stages["round2-pairs"].recipe.sampling.temperature == 0.5
    assert stages["round1-pairs"].recipe.sampling.temperature == 1.0 == stages["final-samples"].recipe.sampling.temperature


@pytest.mark.slow
def test_a_pipeline_dry_run_plans_every_stage_before_any_has_run(tiny_model, tmp_path, capsys):
    """Later stages read data and models the earlier ones write: said and planned with the starting shape."""
    from helpers import run_cli

    code, out, err = run_cli(capsys, "train", str(ITERATIVE), f"output_dir={tmp_path / 'p'}", "--dry-run")
    assert code == 0, err
    assert out.count("memory plan (per training device)") == 7 and "unavailable" not in out
    flat = " ".join(out.split())
    assert f"{tmp_path / 'p'}/round1-pairs/pairs.jsonl is written by stage round1-pairs: read and checked" in flat
    assert f"{tmp_path / 'p'}/rm is written by stage rm: planned with the shape of builtin:tiny-chat" in flat
    assert f"{tmp_path / 'p'}/round1-dpo is written by stage round1-dpo: planned with the shape of builtin:tiny" in flat
    assert not (tmp_path / "p").exists()

    code, out, err = run_cli(capsys, "train", str(ITERATIVE), f"output_dir={tmp_path / 'p'}", "--dry-run", "--json")
    plans = json.loads(out)["stages"]
    assert code == 0 and plans["round2-dpo"]["data"] == {} and plans["sft"]["data"] == {"train": 404}
    assert plans["round2-dpo"]["memory"]["total_bytes"] > 0


def test_a_dry_run_without_its_data_prints_the_plan_then_names_the_file(tiny_model, tmp_path, capsys):
    from helpers import run_cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: dpo\nmodel: {name_or_path: builtin:tiny-chat}\ndata: {train: missing.jsonl}\n")
    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 2 and "memory plan (per training device)" in out
    assert err.strip() == "error: missing.jsonl: data file not found"


@pytest.mark.slow  # trains the iterative pipeline, then reruns it twice
def test_iterative_dpo_runs_two_rounds_reports_each_and_reruns_only_what_changed(tiny_model, tmp_path, capsys):
    small = [f"output_dir={tmp_path}", "sft.trainer.max_steps=2", "rm.trainer.max_steps=2",
             "rm.data.eval={path: builtin:demo/eval.jsonl, limit: 8}"]
    for name in ("round1-pairs", "round2-pairs", "final-samples"):
        small += [f"{name}.data.train={{path: builtin:demo/train.jsonl, limit: 6}}",
                  f"{name}.data.eval={{path: builtin:demo/eval.jsonl, limit: 2}}", f"{name}.sampling.max_new_tokens=8"]
    for name in ("round1-dpo", "round2-dpo"):
        small += [f"{name}.trainer.max_steps=2", f"{name}.data.eval={{path: builtin:demo/eval.jsonl, limit: 8}}"]
    small += [f"{name}.plot=false" for name in ("sft", "rm", "round1-dpo", "round2-dpo")]
    # each round judged by the reward model against the round before; round 2 against the base (sft) too
    small += ["round1-dpo.eval={judge: '${rm.output_dir}', n: 2, max_new_tokens: 4}",
              "round2-dpo.eval={judge: '${rm.output_dir}', n: 2, max_new_tokens: 4, also_against: ['${sft.output_dir}']}"]

    def said() -> list[str]:
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage ")]

    run_pipeline(load_pipeline(ITERATIVE, small))
    summary = json.loads((tmp_path / "pipeline.json").read_text())
    assert all(s["status"] == "completed" and s["ran"] for s in summary["stages"].values())
    rounds = summary["rounds"]
    assert [(r["pairs_stage"], r["policy"], [t["name"] for t in r["trained"]]) for r in rounds] == [
        ("round1-pairs", "sft", ["round1-dpo"]), ("round2-pairs", "round1-dpo", ["round2-dpo"]),
        ("final-samples", "round2-dpo", [])]
    for r in rounds:
        assert r["pairs"] >= 1 and isinstance(r["mean_reward"], float) and isinstance(r["heldout_mean_reward"], float)
        assert r["judge"] == "rm" and 0.0 <= r["judge_accuracy"] <= 1.0
        assert all(0.0 <= t["accuracy"] <= 1.0 and 0.0 <= t["logprob_accuracy"] <= 1.0 for t in r["trained"])
    round1 = json.loads((tmp_path / "round1-dpo" / "run.json").read_text())
    assert round1["data"]["train"]["rows"] == rounds[0]["pairs"]  # round 1's DPO trained on round 1's pairs
    judged = [[(j["against"], j["win_rate"]) for j in r["trained"][0]["judged"]] for r in rounds[:2]]
    assert [[against for against, _ in js] for js in judged] == [["sft"], ["round1-dpo", "sft"]]
    assert all(0.0 <= rate <= 1.0 for js in judged for _, rate in js)
    assert round1["evaluation"]["judge"]["prompts"] == 2 and "after" in round1["evaluation"]
    from dpo_cli.evidence.tables import pipeline_rows

    labels = [row[0] for row in pipeline_rows(summary)[3]]
    assert "  judged win rate vs the model it started from" in labels and "  judged win rate vs sft" in labels

    said()
    run_pipeline(load_pipeline(ITERATIVE, small))
    assert all(line.endswith("skipped") for line in said())
    assert not any(s["ran"] for s in json.loads((tmp_path / "pipeline.json").read_text())["stages"].values())

    # round 2 sampled differently: round 1 stays, round 2 and what reads its output run again
    run_pipeline(load_pipeline(ITERATIVE, small + ["round2-pairs.sampling.temperature=0.7"]), overwrite=True)
    ran = [line.split()[1] for line in said() if not line.endswith("skipped")]
    assert ran == ["round2-pairs", "round2-dpo", "final-samples"]
