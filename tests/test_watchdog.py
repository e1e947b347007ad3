"""Watchdog and early stopping on real DPO runs of the tiny model: NaN loss, stalled eval metric, warnings."""

from __future__ import annotations

import json
import math

import pytest

from helpers import demo_head, tiny_dpo_recipe


def _recipe(write_recipe, out, *, lr=5.0e-4, steps=5, max_length=64, extra="", overrides=()):
    from dpo_cli.train.recipe_load import load_recipe

    folder = out.parent
    text = tiny_dpo_recipe(demo_head("train", 24, folder), demo_head("eval", 8, folder), out, extra=extra,
                           learning_rate=lr, max_steps=steps, max_length=max_length, per_device_train_batch_size=2,
                           per_device_eval_batch_size=16)
    return load_recipe(write_recipe(text), list(overrides))


def _poison_step(monkeypatch, step: int) -> None:
    """Make the policy's logits NaN in its ``step``-th training forward pass (one forward per step here)."""
    import torch

    from dpo_cli.runner import run

    real = run.load_models
    seen = {"forwards": 0}

    def load_models(recipe, stage, plan=None):
        loaded = real(recipe, stage, plan)
        policy = loaded.policy

        def hook(module, args, output):
            if module.training:
                seen["forwards"] += 1
                if seen["forwards"] == step:  # whichever float outputs TRL reads: logits, or fused log-probs
                    for key, value in output.items():
                        if torch.is_tensor(value) and value.is_floating_point():
                            output[key] = value * float("nan")
            return output

        policy.register_forward_hook(hook)
        return loaded

    monkeypatch.setattr(run, "load_models", load_models)


@pytest.mark.slow
def test_nan_loss_stops_training_at_that_step_and_saves_a_checkpoint(tiny_model, write_recipe, tmp_path,
                                                                      monkeypatch):
    from dpo_cli.runner.run import train
    from dpo_cli.train.watchdog import TrainingStopped

    _poison_step(monkeypatch, 3)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"loss became NaN at step 3\b") as caught:
        train(_recipe(write_recipe, out, steps=6))
    assert str(out / "checkpoint-3") in str(caught.value)
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["global_step"] == 3
    assert "step 3" in manifest["error"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3  # nothing trained after the bad step


@pytest.mark.slow
def test_watchdog_false_lets_a_nan_run_continue(tiny_model, write_recipe, tmp_path, monkeypatch):
    from dpo_cli.runner.run import train

    _poison_step(monkeypatch, 2)
    result = train(_recipe(write_recipe, tmp_path / "run", steps=4, overrides=["watchdog=false", "plot=false"]))
    assert result.manifest["status"] == "completed" and result.manifest["global_step"] == 4
    assert not (tmp_path / "run" / "checkpoint-2").exists()


@pytest.mark.slow
def test_early_stopping_triggers_after_patience_evaluations(tiny_model, write_recipe, tmp_path):
    """With learning rate 0 the eval loss never improves: best at the first eval (step 1), stop after 2 more."""
    from dpo_cli.runner.run import train

    extra = "  eval_strategy: steps\n  eval_steps: 1\nearly_stopping:\n  metric: loss\n  patience: 2\nplot: false\n"
    result = train(_recipe(write_recipe, tmp_path / "run", lr=0.0, steps=20, extra=extra))
    stop = result.manifest["early_stopping"]
    assert stop["stopped_at"] == 3 and stop["best_step"] == 1 and stop["mode"] == "min"
    assert result.manifest["global_step"] == 3 and result.manifest["status"] == "completed"


class _State:
    is_world_process_zero = True

    def __init__(self, step):
        self.global_step = step


def test_loss_stuck_at_ln2_with_zero_logprobs_warns_once_with_the_fix():
    """What TRL logs when every completion token was truncated away: loss ln 2, log-probs 0, rewards 0."""
    from types import SimpleNamespace

    from dpo_cli.train.watchdog import Watchdog

    said = []
    dog = Watchdog(warn=said.append)
    logs = {"loss": 0.6931471824645996, "logps/chosen": 0.0, "logps/rejected": 0.0, "rewards/chosen": 0.0}
    for step in (1, 2, 3):
        dog.on_log(SimpleNamespace(max_length=32), _State(step), None, logs=dict(logs))
    assert len(said) == 1 and dog.warnings == said
    assert "ln 2" in said[0] and "no completion tokens survive truncation" in said[0]
    assert "trainer.max_length (now 32)" in said[0]


def test_ordinary_logs_do_not_warn():
    from types import SimpleNamespace

    from dpo_cli.train.watchdog import Watchdog

    said = []
    dog = Watchdog(warn=said.append)
    dog.on_log(SimpleNamespace(max_length=32), _State(1), None,
               logs={"loss": 0.6931471824645996, "logps/chosen": -108.4, "logps/rejected": -117.9})
    assert said == []


def test_falling_chosen_rewards_warn_once_with_the_sft_fix():
    from dpo_cli.train.watchdog import Watchdog

    said = []
    dog = Watchdog(window=2, warn=said.append)
    for step, reward in enumerate([0.01, 0.0, -0.01, -0.02, -0.03, -0.05, -0.06, -0.08], 1):
        dog.on_log(None, _State(step), None, logs={"loss": 0.6, "rewards/chosen": reward})
    assert len(said) == 1 and "loss_type: [sigmoid, sft]" in said[0]
    assert said[0].startswith("step 6:")  # the first step where three windows of 2 fall below zero


def test_noisy_but_rising_chosen_rewards_do_not_warn():
    from dpo_cli.train.watchdog import Watchdog

    said = []
    dog = Watchdog(window=2, warn=said.append)
    for step, reward in enumerate([-0.05, -0.02, -0.04, 0.0, -0.01, 0.02, 0.01, 0.03], 1):
        dog.on_log(None, _State(step), None, logs={"rewards/chosen": reward, "logps/chosen": -50.0})
    assert said == []


def test_early_stopping_min_delta_and_mode():
    from transformers import TrainerControl

    from dpo_cli.train.watchdog import EarlyStopping

    stopper = EarlyStopping("rewards/accuracies", patience=2, min_delta=0.05)
    assert stopper.mode == "max" and stopper.key == "eval_rewards/accuracies"
    control = TrainerControl()
    for step, value in enumerate([0.5, 0.54, 0.6, 0.62, 0.64], 1):  # +0.06 counts, +0.04 and +0.02 do not
        stopper.on_evaluate(None, _State(step), control, metrics={"eval_rewards/accuracies": value})
        if control.should_training_stop:
            break
    assert stopper.best == 0.6 and stopper.best_step == 3 and stopper.stopped_at == 5


def test_early_stopping_on_a_metric_the_trainer_does_not_log_names_the_choices():
    from transformers import TrainerControl

    from dpo_cli.core.errors import InputError
    from dpo_cli.train.watchdog import EarlyStopping

    with pytest.raises(InputError, match="did you mean 'rewards/margins'"):
        EarlyStopping("rewards/margin").on_evaluate(None, _State(1), TrainerControl(),
                                                    metrics={"eval_loss": 0.6, "eval_rewards/margins": 0.1})


def test_ln2_constant_is_the_dpo_loss_at_zero_margin():
    from dpo_cli.train.watchdog import LN2

    assert LN2 == pytest.approx(-math.log(1 / (1 + math.exp(0))))
