"""A few real training steps per stage on the tiny model: loss logged, weights changed, output loads."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from dpo_cli.recipe.load import load_recipe
from dpo_cli.train.run import train
from dpo_cli.train.stages import unavailable
from helpers import run_cli

TINY = REPO / "recipes" / "tiny"
SMALL = ["plot=false", "data.train={path: builtin:demo/train.jsonl, limit: 32}"]
SMALL_EVAL = ["data.eval={path: builtin:demo/eval.jsonl, limit: 16}"]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _train_logs(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["split"] == "train"]


def _changed(before: dict, after: dict, key: str = "model.layers.0.mlp.down_proj.weight") -> bool:
    return not (before[key] == after[key]).all()


def _run(recipe_file, tmp_path, *overrides):
    out = tmp_path / "out"
    result = train(load_recipe(recipe_file, [*SMALL, f"output_dir={out}", *overrides]))
    assert result.manifest["status"] == "completed"
    return out, result


@pytest.mark.slow
def test_sft_smoke(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out, _ = _run(TINY / "sft.yaml", tmp_path, "trainer.max_steps=3", "trainer.logging_steps=1", "data.eval=null")
    logs = _train_logs(out)
    assert [m["step"] for m in logs] == [1, 2, 3] and all(isinstance(m["loss"], float) for m in logs)
    assert _changed(_weights(tiny_model), _weights(out))
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
def test_dpo_loss_mix_smoke(tiny_model, tmp_path):
    out, result = _run(TINY / "dpo.yaml", tmp_path, "trainer.max_steps=2", "trainer.logging_steps=1", *SMALL_EVAL)
    logs = _train_logs(out)
    assert len(logs) == 2 and all(isinstance(m["loss"], float) for m in logs)
    assert _changed(_weights(tiny_model), _weights(out))
    assert result.manifest["evaluation"]["after"]["pairs"] == 16


@pytest.mark.slow
def test_kto_smoke(tiny_model, tmp_path):
    out, _ = _run(TINY / "kto.yaml", tmp_path, "trainer.max_steps=2", "trainer.logging_steps=1", "data.eval=null")
    logs = _train_logs(out)
    assert len(logs) == 2 and all(isinstance(m["loss"], float) for m in logs)
    assert _changed(_weights(tiny_model), _weights(out))


@pytest.mark.slow
def test_reward_smoke_then_score(tiny_model, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    out, result = _run(TINY / "reward.yaml", tmp_path, "trainer.max_steps=3", "trainer.logging_steps=1",
                       *SMALL_EVAL)
    logs = _train_logs(out)
    assert len(logs) == 3 and all(isinstance(m["loss"], float) for m in logs)
    assert _changed(_weights(tiny_model), _weights(out))
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    evaluation = result.manifest["evaluation"]
    assert evaluation["after"]["pairs"] == 16 and 0.0 <= evaluation["after"]["reward_accuracy"] <= 1.0
    assert set(evaluation["before"]) >= {"reward_accuracy", "reward_margin", "length_bias"}

    capsys.readouterr()
    code, stdout, _ = run_cli(capsys, "score", str(out), "--data", "builtin:demo/eval.jsonl")
    assert code == 0 and "pairwise accuracy (chosen scored above rejected)" in stdout and "80 rows" in stdout
    scored = tmp_path / "scored.jsonl"
    code, _, _ = run_cli(capsys, "score", str(out), "--data", "builtin:demo/eval.jsonl", "-o", str(scored))
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert code == 0 and len(rows) == 80 and isinstance(rows[0]["score_chosen"], float)

    code, _, stderr = run_cli(capsys, "score", str(tiny_model), "--data", "builtin:demo/eval.jsonl")
    assert code == 2 and "is not a reward model" in stderr


REWARDS = """\
def brevity(completions, **kwargs):
    return [1.0 / (1 + len(c if isinstance(c, str) else c[-1]["content"])) for c in completions]


def broken(completions, **kwargs):
    if kwargs["trainer_state"].global_step >= 1:
        raise ZeroDivisionError("division by zero")
    return [0.0] * len(completions)
"""


@pytest.mark.slow
def test_grpo_smoke_with_a_user_function_and_one_that_raises(tiny_model, tmp_path, monkeypatch):
    from dpo_cli.train.rewards import RewardFunctionError

    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    functions = "reward.functions=[{length: {target: 20}}, my_rewards.py:brevity]"
    out, _ = _run(TINY / "grpo.yaml", tmp_path, functions, "trainer.max_steps=2", "data.train={path: "
                  "builtin:demo/train.jsonl, limit: 8}")
    logs = _train_logs(out)
    assert len(logs) == 2 and all(isinstance(m["loss"], float) for m in logs)
    assert "rewards/brevity/mean" in logs[0] and "rewards/LengthReward/mean" not in logs[0]
    assert _changed(_weights(tiny_model), _weights(out))

    recipe = load_recipe(TINY / "grpo.yaml", [*SMALL, f"output_dir={tmp_path / 'broken'}", "trainer.max_steps=3",
                                              "reward.functions=[my_rewards.py:broken]", "reward.weights=null"])
    with pytest.raises(RewardFunctionError, match=r"reward function 'broken', batch 2 \(training step 2\) raised "
                                                  r"ZeroDivisionError: division by zero"):
        train(recipe)


@pytest.mark.slow
@pytest.mark.ppo
@pytest.mark.skipif(unavailable("ppo") is not None, reason="PPO needs trl<1.13: pip install 'dpo-cli[ppo]'")
def test_ppo_smoke_after_a_reward_model(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    rm, _ = _run(TINY / "reward.yaml", tmp_path / "rm", "trainer.max_steps=2", "data.eval=null")
    out, result = _run(TINY / "ppo.yaml", tmp_path, f"reward.model={rm}", "trainer.total_episodes=16")
    logs = _train_logs(out)
    assert len(logs) == 2 and all(isinstance(m["loss/policy_avg"], float) for m in logs)
    assert all(isinstance(m["objective/scores"], float) for m in logs)
    assert _changed(_weights(tiny_model), _weights(out))
    policy = AutoModelForCausalLM.from_pretrained(out)  # the policy alone, without the value head
    assert policy.config.architectures == ["LlamaForCausalLM"]


@pytest.mark.ppo
@pytest.mark.skipif(unavailable("ppo") is not None, reason="PPO needs trl<1.13: pip install 'dpo-cli[ppo]'")
def test_ppo_recipe_rules(tmp_path):
    from dpo_cli.core.errors import RecipeError

    with pytest.raises(RecipeError, match="stage ppo needs a reward model"):
        load_recipe(TINY / "ppo.yaml", ["reward=null"])
    with pytest.raises(RecipeError, match="set the model with reward.model, not trainer.reward_model_path"):
        load_recipe(TINY / "ppo.yaml", ["trainer.reward_model_path=x"])
    fields = load_recipe(TINY / "ppo.yaml").trainer
    from dpo_cli.train.config import build_config
    from dpo_cli.train.device import DevicePlan

    config = build_config(load_recipe(TINY / "ppo.yaml"), DevicePlan("cpu", 0, "fp32", "test"))
    for knob in ("kl_coef", "gamma", "lam", "cliprange", "vf_coef", "num_ppo_epochs", "response_length",
                 "temperature", "missing_eos_penalty"):
        assert getattr(config, knob) == fields[knob], knob


@pytest.mark.ppo
@pytest.mark.slow
@pytest.mark.skipif(unavailable("ppo") is not None, reason="PPO needs trl<1.13: pip install 'dpo-cli[ppo]'")
def test_ppo_stops_on_sigterm_with_a_message_true_for_ppo(tiny_model, tmp_path):
    """TRL's PPO loop ignores should_training_stop and cannot resume: the signal ends the run at a step boundary,
    exit 143, and the message says to start again rather than to --resume."""
    import signal
    import subprocess
    import sys
    import time

    rm, _ = _run(TINY / "reward.yaml", tmp_path / "rm", "trainer.max_steps=2", "data.eval=null")
    out = tmp_path / "ppo"
    process = subprocess.Popen([sys.executable, "-m", "dpo_cli", "train", str(TINY / "ppo.yaml"), f"output_dir={out}",
                                f"reward.model={rm}", "trainer.total_episodes=4000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM after step" in err and "stage ppo cannot resume" in err
    assert "--resume auto" not in err


def test_early_stopping_is_refused_for_a_stage_with_its_own_loop(tmp_path):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.train.stages import get_stage

    if unavailable("ppo"):
        pytest.skip("this TRL has no PPO")
    assert not get_stage("ppo").step_loop
    with pytest.raises(RecipeError, match="early_stopping.*TRL's PPO trainer runs its own loop"):
        load_recipe(TINY / "ppo.yaml", ["data.eval_split=0.25", "trainer.eval_strategy=steps",
                                        "early_stopping.metric=loss"])
