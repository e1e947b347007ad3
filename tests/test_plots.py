"""dpo-cli plot: PNG curves from a metrics.jsonl, without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpo_cli.core.errors import InputError


def write_metrics(run_dir, steps: int = 12, eval_every: int = 4) -> None:
    """A metrics.jsonl as MetricsFileCallback writes it for a DPO run: train logs, eval logs, a summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, steps + 1):
        lines.append({"step": step, "epoch": step / steps, "split": "train", "loss": 0.69 - 0.02 * step,
                      "learning_rate": 1e-4 * (1 - step / steps), "rewards/chosen": 0.01 * step,
                      "rewards/rejected": -0.02 * step, "rewards/margins": 0.03 * step,
                      "rewards/accuracies": min(1.0, 0.5 + 0.05 * step), "logps/chosen": -80.0 + step,
                      "logps/rejected": -90.0 - step, "grad_norm": None})
        if step % eval_every == 0:
            lines.append({"step": step, "split": "eval", "eval_loss": 0.7 - 0.01 * step, "eval_runtime": 0.5,
                          "eval_rewards/accuracies": 0.6, "eval_rewards/margins": 0.02 * step,
                          "eval_rewards/chosen": 0.01, "eval_rewards/rejected": -0.01, "eval_entropy": 7.5})
    lines.append({"step": steps, "split": "summary", "train_runtime": 3.2, "train_loss": 0.6})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _check_png(path, width: int) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == width and image.size[1] > 100


def test_plot_writes_one_valid_png_per_curve(tmp_path):
    from dpo_cli.evidence.plots import plot_run

    write_metrics(tmp_path)
    paths = plot_run(tmp_path)
    assert [p.name for p in paths] == ["loss.png", "rewards.png", "margins.png", "accuracies.png", "logps.png",
                                       "learning_rate.png", "eval.png"]
    for path in paths:
        assert path.parent == tmp_path / "plots"
        _check_png(path, 640 if path.name != "eval.png" else 320)  # one other eval metric: a grid of one


def test_held_out_margin_histogram_from_run_json(tmp_path):
    from dpo_cli.evidence.plots import plot_run

    write_metrics(tmp_path)
    histogram = {"edges": [-1.0, 0.0, 1.0, 2.0], "counts": [2, 5, 1]}
    (tmp_path / "run.json").write_text(json.dumps({"evaluation": {"after": {"pairs": 8,
                                                                             "margin_histogram": histogram}}}))
    names = [p.name for p in plot_run(tmp_path)]
    assert "heldout_margins.png" in names
    _check_png(tmp_path / "plots" / "heldout_margins.png", 640)


def test_a_run_with_only_a_loss_gets_only_a_loss_plot(tmp_path):
    from dpo_cli.evidence.plots import plot_run

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n"
                                                    for s in range(1, 4)))
    assert [p.name for p in plot_run(tmp_path)] == ["loss.png"]


def test_a_run_of_one_logged_step_has_no_curve_to_draw(tmp_path):
    """One point per metric is no curve: the plot command says so, and the end of training draws nothing (and does
    not import matplotlib for it)."""
    from dpo_cli.core.rundir import RunDir
    from dpo_cli.evidence.plots import plot_after_training, plot_run

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 0.69}) + "\n")
    with pytest.raises(InputError, match="no metric was logged at two steps or more"):
        plot_run(tmp_path)
    assert plot_after_training(RunDir(tmp_path)) == [] and not (tmp_path / "plots").exists()


def test_missing_or_empty_or_broken_metrics_are_clear_errors(tmp_path):
    from dpo_cli.evidence.plots import plot_run

    with pytest.raises(InputError, match="has no metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(InputError, match="holds no logged metrics"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss"\n')
    with pytest.raises(InputError, match=r"metrics.jsonl:2: not a JSON line"):
        plot_run(tmp_path)


def test_plot_command_does_not_import_torch(tmp_path):
    write_metrics(tmp_path)
    code = ("import sys; from dpo_cli.cli import app; "
            f"app(['plot', {str(tmp_path)!r}], standalone_mode=False); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loss.png" in done.stdout
