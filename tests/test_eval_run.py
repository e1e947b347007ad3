"""End of a real tiny DPO run: before/after figures in run.json, plots, TensorBoard, then eval, compare and report."""

from __future__ import annotations

import json

import pytest

from helpers import demo_head, tiny_dpo_recipe

pytestmark = pytest.mark.slow  # every test here trains a model (make test-fast skips them)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    from dpo_cli.runner.run import train
    from dpo_cli.train.recipe_load import load_recipe

    folder = tmp_path_factory.mktemp("evidence")
    recipe = folder / "recipe.yaml"
    recipe.write_text(tiny_dpo_recipe(demo_head("train", 24, folder), demo_head("eval", 8, folder), folder / "run",
                                      eval_strategy="steps", eval_steps=2, report_to="tensorboard"), encoding="utf-8")
    train(load_recipe(recipe))
    return folder / "run"


def _invoke(args):
    from typer.testing import CliRunner

    from dpo_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_run_json_holds_before_and_after_figures(run_dir):
    manifest = json.loads((run_dir / "run.json").read_text())
    before, after = manifest["evaluation"]["before"], manifest["evaluation"]["after"]
    assert before["pairs"] == after["pairs"] == 8
    assert before["reward_margin"] == 0.0 and before["kl_chosen_per_token"] == 0.0
    assert after["kl_chosen_per_token"] > 0  # three steps at a high learning rate move the policy
    assert after["reward_margin"] != 0.0
    assert set(after["margin_quantiles"]) == {"min", "p10", "p25", "p50", "p75", "p90", "max"}
    assert set(after["length_bias"]) == {"chosen_longer_fraction", "correlation", "r_squared", "margin_per_token"}


def test_plots_are_drawn_at_the_end_of_training(run_dir):
    manifest = json.loads((run_dir / "run.json").read_text())
    assert {"loss.png", "rewards.png", "margins.png", "accuracies.png", "learning_rate.png", "eval.png",
            "heldout_margins.png"} <= set(manifest["plots"])
    for name in manifest["plots"]:
        assert (run_dir / "plots" / name).read_bytes().startswith(PNG)


def test_tensorboard_event_files_are_written_offline(run_dir):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    files = list(run_dir.glob("runs/*/events.out.tfevents.*"))
    assert files, "report_to: tensorboard wrote no event file"
    events = event_accumulator.EventAccumulator(str(files[0].parent))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "eval/loss" in scalars
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def test_cli_eval_of_the_run_directory_reproduces_run_json(run_dir):
    after = json.loads((run_dir / "run.json").read_text())["evaluation"]["after"]
    out = json.loads(_invoke(["eval", run_dir, "--json"]).stdout)
    assert out["reference"] == "builtin:tiny-chat" and out["beta"] == 0.1 and out["max_length"] == 64
    assert out["data"]["pairs"] == 8
    m = out["metrics"]
    assert m["reward_accuracy"] == after["reward_accuracy"]
    assert m["reward_margin"] == pytest.approx(after["reward_margin"], rel=1e-3, abs=1e-6)
    assert m["kl_chosen_per_token"] == pytest.approx(after["kl_chosen_per_token"], rel=1e-3, abs=1e-7)


def test_compare_then_report(run_dir):
    data = run_dir.parent / "eval.jsonl"
    _invoke(["compare", "--tuned", run_dir, "--data", data, "-n", "2", "--max-new-tokens", "4"])
    markdown = (run_dir / "compare.md").read_text()
    assert "## 1" in markdown and "## 2" in markdown and "## 3" not in markdown
    assert "| greedy |" in markdown and "| sampled |" in markdown and "`builtin:tiny-chat`" in markdown
    rows = json.loads((run_dir / "compare.json").read_text())["rows"]
    first_prompt = json.loads(data.read_text().splitlines()[0])["prompt"]
    assert len(rows) == 2 and rows[0]["prompt"] == first_prompt
    assert {"base_greedy", "tuned_greedy", "base_sampled", "tuned_sampled"} <= set(rows[0])

    _invoke(["report", run_dir])
    html = (run_dir / "report.html").read_text()
    assert first_prompt[0]["content"] in html  # the sample generations section shows the compared prompts
    assert html.count("data:image/png;base64,") == len(list((run_dir / "plots").glob("*.png")))


def test_a_tracker_that_is_not_installed_is_a_clear_error_before_loading(monkeypatch):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.train.trackers import check_trackers

    check_trackers(["tensorboard"])  # installed with the dev extra
    check_trackers("none")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(RecipeError, match=r"report_to 'wandb' needs the wandb package: pip install wandb .*"
                                          r"WANDB_MODE=offline") as caught:
        check_trackers(["wandb"])
    assert caught.value.field == "trainer.report_to"
