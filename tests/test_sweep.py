"""Sweeps: the grid's points and names, --print-commands, bad input, skipping and ranking completed points, and a
3-point beta sweep on the tiny model that reuses the tokenized data and reference log-probs and resumes."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from conftest import REPO
from dpo_cli.core.rundir import RunDir
from dpo_cli.runner.sweep import plan_sweep, point_name, split_values
from helpers import run_cli

TINY = REPO / "recipes" / "tiny" / "dpo.yaml"


def test_values_split_at_top_level_commas_only():
    assert split_values("0.05, 0.1,0.2") == ["0.05", "0.1", "0.2"]
    assert split_values("[sigmoid,sft],[sigmoid, bco_pair],'a,b'") == ["[sigmoid,sft]", "[sigmoid, bco_pair]",
                                                                        "'a,b'"]


def test_point_names_are_readable_and_safe_directory_names():
    assert point_name([("trainer.beta", "0.05"), ("lora.r", "16")]) == "trainer.beta=0.05,lora.r=16"
    assert point_name([("trainer.loss_type", "[sigmoid, sft]")]) == "trainer.loss_type=sigmoid+sft"
    assert point_name([("model.name_or_path", "/models/a b:c")]) == "model.name_or_path=_models_a_b_c"
    long = point_name([("model.name_or_path", "x" * 300)])
    assert len(long) == 200 and long != point_name([("model.name_or_path", "x" * 301)])


def test_print_commands_prints_one_train_line_per_point(capsys, tmp_path):
    out = tmp_path / "sw"
    code, stdout, err = run_cli(capsys, "train", str(TINY), "--sweep", "trainer.beta=0.05,0.1", "--sweep",
                                "trainer.learning_rate=1e-4,5e-4", "trainer.max_steps=3", f"output_dir={out}",
                                "--print-commands", "--nproc", "2")
    assert code == 0, err
    lines = []
    for beta in ("0.05", "0.1"):
        for lr in ("1e-4", "5e-4"):
            name = f"trainer.beta={beta},trainer.learning_rate={lr}"
            lines.append(shlex.join(["dpo-cli", "train", str(TINY), "trainer.max_steps=3", f"trainer.beta={beta}",
                                     f"trainer.learning_rate={lr}", "ref_model.precompute=true",
                                     f"output_dir={out / name}", "--nproc", "2"]))
    assert stdout.splitlines() == lines
    assert not out.exists()


def test_a_recipe_that_sets_precompute_keeps_its_choice(tmp_path):
    sweep = plan_sweep(TINY, [f"output_dir={tmp_path}", "ref_model.precompute=false"], ["trainer.beta=0.1,0.2"])
    assert not sweep.precompute_added
    assert [p.recipe.ref_model.precompute for p in sweep.points] == [False, False]
    assert [p.values for p in sweep.points] == [{"trainer.beta": 0.1}, {"trainer.beta": 0.2}]
    assert [p.recipe.output_dir for p in sweep.points] == [str(tmp_path / "trainer.beta=0.1"),
                                                          str(tmp_path / "trainer.beta=0.2")]


@pytest.mark.parametrize(("args", "message"), [
    (["--sweep", "trainer.betta=0.05,0.1"], "field 'trainer.betta': DPOConfig has no field 'betta'; did you mean "
                                           "'beta'?"),
    (["--sweep", "lora.rank=8,16"], "field 'lora.rank'"),
    (["--sweep", "trainer.beta=0.1"], "--sweep trainer.beta=0.1: a sweep needs two values or more"),
    (["--sweep", "trainer.beta=0.1,0.2", "--sweep", "trainer.beta=0.3,0.4"], "--sweep trainer.beta is given twice"),
    (["--sweep", "trainer.beta=0.1,0.2", "trainer.beta=0.3"], "--sweep trainer.beta is also set by the override "
                                                              "trainer.beta=0.3"),
    (["--sweep", "trainer.beta=0.1,0.10"], "the value 0.1 is listed twice"),
    (["--sweep", "trainer.beta"], "expected KEY=V1,V2,..."),
    (["--sweep", "output_dir=a,b"], "--sweep output_dir"),
    (["--sweep", "trainer.beta=0.1,0.2", "--select", "eval.acuracy"], "did you mean 'eval.accuracy'?"),
    (["--select", "eval.accuracy"], "--select and --print-commands go with --sweep"),
    (["--sweep", "trainer.beta=0.1,0.2", "--nproc", "2"], "add --print-commands"),
    (["--sweep", "trainer.beta=0.1,0.2", "--resume", "some/checkpoint-4"], "--resume takes auto"),
    (["--sweep", "trainer.beta=0.1,0.2", "--resume", "auto", "--print-commands"], "prints each point's first run"),
])
def test_bad_sweeps_exit_2_with_one_line(capsys, tmp_path, args, message):
    code, _, err = run_cli(capsys, "train", str(TINY), f"output_dir={tmp_path / 'sw'}", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "sw").exists()


def test_a_pipeline_recipe_is_not_swept(capsys):
    code, _, err = run_cli(capsys, "train", str(REPO / "recipes/tiny/pipeline-sft-dpo.yaml"), "--sweep",
                           "trainer.beta=0.1,0.2")
    assert code == 2 and "a pipeline (stages:) cannot be swept" in err


def _fake_point(point, status: str = "completed", accuracy: float | None = None, recipe: str | None = None):
    """A point's run directory as a run of it leaves it, without training."""
    run = RunDir(point.recipe.output_dir)
    run.path.mkdir(parents=True)
    run.write_recipe(recipe if recipe is not None else point.recipe.resolved_yaml())
    after = {"pairs": 8, "reward_accuracy": accuracy, "reward_margin": accuracy / 10} if accuracy is not None else {}
    run.write_manifest({"status": status, "global_step": 2, "started_at": "2026-01-01T00:00:00+00:00",
                        "finished_at": "2026-01-01T00:00:30+00:00",
                        **({"evaluation": {"before": {"pairs": 8, "reward_accuracy": 0.25}, "after": after}}
                           if after else {})})


def test_a_judged_win_rate_is_a_column_and_a_selectable_figure(capsys, tmp_path):
    out = tmp_path / "sw"
    sweep = plan_sweep(TINY, [f"output_dir={out}"], ["trainer.beta=0.1,0.2"])
    for point, (accuracy, win) in zip(sweep.points, ((0.9, 0.40), (0.6, 0.70))):
        _fake_point(point, accuracy=accuracy)
        run = RunDir(point.recipe.output_dir)
        manifest = run.read_json(RunDir.MANIFEST)
        manifest["evaluation"]["judge"] = {"win_rate": win, "length_controlled_win_rate": win / 2}
        run.write_manifest(manifest)
    code, stdout, err = run_cli(capsys, "train", str(TINY), f"output_dir={out}", "--sweep", "trainer.beta=0.1,0.2",
                                "--select", "eval.win_rate")
    assert code == 0, err
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in summary["points"]] == ["trainer.beta=0.2", "trainer.beta=0.1"]
    assert summary["points"][0]["heldout"]["lc_win_rate"] == 0.35
    assert "LC win" in stdout and "0.700" in stdout


def test_completed_points_are_skipped_and_ranked_best_first(capsys, tmp_path):
    out = tmp_path / "sw"
    args = [str(TINY), f"output_dir={out}", "--sweep", "trainer.beta=0.05,0.1,0.2"]
    sweep = plan_sweep(TINY, [f"output_dir={out}"], ["trainer.beta=0.05,0.1,0.2"])
    for point, accuracy in zip(sweep.points, (0.5, 0.875, 0.625)):
        _fake_point(point, accuracy=accuracy)
    code, stdout, err = run_cli(capsys, "train", *args)
    assert code == 0, err
    assert err.count("complete in") == 3 and "skipped" in err
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in summary["points"]] == ["trainer.beta=0.1", "trainer.beta=0.2", "trainer.beta=0.05"]
    assert summary["best"] == "trainer.beta=0.1" and summary["select"]["metric"] == "eval.accuracy"
    assert [p["this_run"] for p in summary["points"]] == ["skipped"] * 3
    assert summary["points"][0]["heldout"]["reward_accuracy"] == 0.875 and summary["points"][0]["seconds"] == 30
    assert summary["sweep"] == {"trainer.beta": ["0.05", "0.1", "0.2"]}
    assert "best first by eval.accuracy (highest first); s: seconds; held-out pairs: 8" in stdout
    assert re.findall(r"│ (\d) │ ([0-9.]+) +│ skipped +│ +2 │ +([0-9.]+) │", stdout) == [
        ("1", "0.1", "0.875"), ("2", "0.2", "0.625"), ("3", "0.05", "0.500")]
    assert f"best by eval.accuracy: trainer.beta=0.1 in {out / 'trainer.beta=0.1'}" in stdout

    code, stdout, err = run_cli(capsys, "train", *args, "--select", "eval.accuracy:min")
    assert code == 0, err
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in summary["points"]] == ["trainer.beta=0.05", "trainer.beta=0.2", "trainer.beta=0.1"]


def test_an_unfinished_or_changed_point_is_said_before_anything_runs(capsys, tmp_path):
    out = tmp_path / "sw"
    args = [str(TINY), f"output_dir={out}", "--sweep", "trainer.beta=0.05,0.1"]
    first, second = plan_sweep(TINY, [f"output_dir={out}"], ["trainer.beta=0.05,0.1"]).points
    _fake_point(first, accuracy=0.5)
    _fake_point(second, status="interrupted")
    code, _, err = run_cli(capsys, "train", *args)
    assert code == 2
    assert err.strip() == (f"error: sweep point trainer.beta=0.1 in {out / 'trainer.beta=0.1'} is unfinished "
                           "(run.json status interrupted): run the same command with --resume auto to continue it, "
                           "or --overwrite to start it again")
    code, stdout, err = run_cli(capsys, "train", *args, "--dry-run")
    assert code == 0, err
    assert "trainer.beta=0.05: complete, would be skipped" in stdout
    assert "trainer.beta=0.1: unfinished (interrupted): --resume auto continues it" in stdout
    assert not (out / "sweep.json").exists()

    RunDir(first.recipe.output_dir).write_recipe("stage: dpo\n")  # run by another recipe
    code, _, err = run_cli(capsys, "train", *args, "--resume", "auto")
    assert code == 2 and "trainer.beta=0.05" in err and "holds a completed run of another recipe" in err


def test_output_dir_holding_a_single_run_is_refused(capsys, tmp_path):
    (tmp_path / "run.json").write_text("{}")
    code, _, err = run_cli(capsys, "train", str(TINY), f"output_dir={tmp_path}", "--sweep", "trainer.beta=0.1,0.2")
    assert code == 2 and "holds a single run" in err


@pytest.mark.slow
def test_a_beta_sweep_reuses_data_and_reference_and_resumes(capsys, tmp_path, tiny_model, cpu_only, monkeypatch):
    """Three points of the tiny DPO recipe: the first tokenizes and computes the reference log-probs, the others
    find both in the caches. Then the last point is left as a killed run leaves it (run.json running, checkpoints
    on disk), and --resume auto skips the complete points and goes on inside that one."""
    import datasets

    from dpo_cli.runner import pipeline

    store = tmp_path / "data"
    computed: list[str] = []  # per point: the dataset maps that wrote a cache file rather than finding one
    original_map, original_run = datasets.Dataset.map, pipeline.run_stage

    def map_noting_writes(self, *args, **kwargs):
        before = set(store.rglob("cache-*.arrow"))
        out = original_map(self, *args, **kwargs)
        if set(store.rglob("cache-*.arrow")) - before:
            computed.append(str(kwargs.get("desc")))
        return out

    def run_noting_point(recipe, **kwargs):
        computed.append(f"POINT {recipe.trainer['beta']}")
        return original_run(recipe, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", map_noting_writes)
    monkeypatch.setattr(pipeline, "run_stage", run_noting_point)
    out = tmp_path / "sw"
    args = [str(TINY), f"output_dir={out}", "--sweep", "trainer.beta=0.05,0.1,0.2",
            "data.train={path: builtin:demo/train.jsonl, limit: 24}",
            "data.eval={path: builtin:demo/eval.jsonl, limit: 8}", f"data.cache_dir={store}",
            f"ref_model.cache_dir={tmp_path / 'ref'}", "trainer.max_steps=2", "trainer.per_device_train_batch_size=4",
            "trainer.max_length=64", "trainer.logging_steps=1", "trainer.save_strategy=steps", "trainer.save_steps=1",
            "plot=false"]
    code, stdout, err = run_cli(capsys, "train", *args)
    assert code == 0, err
    summary = json.loads((out / "sweep.json").read_text())
    points = {p["name"]: p for p in summary["points"]}
    assert set(points) == {"trainer.beta=0.05", "trainer.beta=0.1", "trainer.beta=0.2"}
    for name, point in points.items():
        manifest = json.loads((out / name / "run.json").read_text())
        assert manifest["status"] == "completed" and point["this_run"] == "ran"
        assert point["heldout"]["reward_accuracy"] == manifest["evaluation"]["after"]["reward_accuracy"]
        assert point["heldout_pairs"] == 8 and point["values"] == {"trainer.beta": float(name.split("=")[1])}
        events = {e["split"]: e["event"] for e in manifest["ref_logp_cache"]}
        assert point["reuse"]["ref_logps"] == events
    assert points["trainer.beta=0.05"]["reuse"] == {"splits_prepared": 2, "ref_logps": {"train": "miss",
                                                                                       "eval": "miss"}}
    for name in ("trainer.beta=0.1", "trainer.beta=0.2"):
        assert points[name]["reuse"] == {"splits_prepared": 0, "ref_logps": {"train": "hit", "eval": "hit"}}
    # TRL tokenized the rows for the first point only; later points redo only its filter of over-long rows (its
    # fingerprint holds the whole config, beta included) and the copy that adding the cached log-probs makes of it
    marks = [i for i, entry in enumerate(computed) if entry.startswith("POINT")]
    assert [computed[i] for i in marks] == ["POINT 0.05", "POINT 0.1", "POINT 0.2"]
    first, later = computed[marks[0]:marks[1]], computed[marks[1]:]
    assert any(desc.startswith("Tokenizing") for desc in first), first
    assert [desc for desc in later if not desc.startswith(("POINT", "Dropping fully truncated", "Flattening"))] == []
    ranked = [p["heldout"]["reward_accuracy"] for p in summary["points"]]
    assert ranked == sorted(ranked, reverse=True) and summary["best"] == summary["points"][0]["name"]
    assert "prepared rows reused from the cache" in err and "reference log-probs: read from the cache (train, eval)" in err
    assert "ref_model.precompute auto became true" in err
    assert "sweep: 3 points, best first by eval.accuracy" in stdout and "sweep done" in stdout

    # the last point as a kill -9 leaves it: run.json still running, its checkpoints written
    killed = out / "trainer.beta=0.2"
    manifest = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**manifest, "status": "running", "finished_at": None}))
    code, _, err = run_cli(capsys, "train", *args)
    assert code == 2 and "trainer.beta=0.2" in err and "--resume auto" in err
    code, stdout, err = run_cli(capsys, "train", *args, "--resume", "auto")
    assert code == 0, err
    assert "trainer.beta=0.05: complete in" in err and "trainer.beta=0.1: complete in" in err
    resumed = json.loads((killed / "run.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("checkpoint-2")
    summary = json.loads((out / "sweep.json").read_text())
    assert {p["name"]: p["this_run"] for p in summary["points"]} == {
        "trainer.beta=0.05": "skipped", "trainer.beta=0.1": "skipped", "trainer.beta=0.2": "resumed"}
