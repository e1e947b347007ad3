"""A few real training steps per stage on the tiny model: loss logged, weights changed, output loads."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from dpo_cli.runner.pipeline import run_stage as train_stage
from dpo_cli.runner.run import train
from dpo_cli.train.recipe_load import load_recipe
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
    import dataclasses

    from trl.experimental.ppo import PPOConfig

    from dpo_cli.train.config import build_config
    from dpo_cli.train.device import DevicePlan

    # values none of which is PPOConfig's default (ppo.yaml keeps several defaults), so each must reach the config
    knobs = {"kl_coef": 0.07, "gamma": 0.99, "lam": 0.9, "cliprange": 0.3, "vf_coef": 0.2, "num_ppo_epochs": 2,
             "response_length": 16, "temperature": 0.9, "missing_eos_penalty": 2.0}
    defaults = {f.name: f.default for f in dataclasses.fields(PPOConfig) if f.name in knobs}
    assert all(defaults[knob] != value for knob, value in knobs.items()), defaults
    recipe = load_recipe(TINY / "ppo.yaml", [f"trainer.{knob}={value}" for knob, value in knobs.items()])
    config = build_config(recipe, DevicePlan("cpu", 0, "fp32", "test"))
    assert {knob: getattr(config, knob) for knob in knobs} == knobs


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


# --- reference-free preference stages, RLOO, online DPO, pairs --------------------------------------------------------

def _skip_without(stage: str):
    return pytest.mark.skipif(unavailable(stage) is not None, reason=f"this TRL has no trainer for {stage}")


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    """A reward model trained for two steps: a judge for online-dpo and pairs."""
    out, _ = _run(TINY / "reward.yaml", tmp_path_factory.mktemp("rm"), "trainer.max_steps=2", "data.eval=null")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["orpo", "simpo", "cpo"])
def test_reference_free_preference_stage_smoke(stage, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    if unavailable(stage):
        pytest.skip(unavailable(stage))
    out, result = _run(TINY / f"{stage}.yaml", tmp_path, "trainer.max_steps=2", "trainer.logging_steps=1",
                       *SMALL_EVAL)
    logs = _train_logs(out)
    assert len(logs) == 2 and all(isinstance(m["loss"], float) and "rewards/margins" in m for m in logs)
    assert _changed(_weights(tiny_model), _weights(out))
    AutoModelForCausalLM.from_pretrained(out)
    after = result.manifest["evaluation"]["after"]
    # no reference: log-prob figures only, no implicit reward measured against a model that is not there
    assert after["pairs"] == 16 and 0.0 <= after["logprob_accuracy"] <= 1.0 and "reward_accuracy" not in after
    assert result.manifest["reference"].startswith("none")


@pytest.mark.slow
def test_rloo_smoke(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out, result = _run(TINY / "rloo.yaml", tmp_path, "trainer.max_steps=2",
                       "data.train={path: builtin:demo/train.jsonl, limit: 8}")
    logs = _train_logs(out)
    assert len(logs) == 2 and all(isinstance(m["loss"], float) for m in logs)
    assert all(isinstance(m["rewards/length/mean"], float) for m in logs)
    assert "kl" in logs[0]  # beta 0.05: a KL penalty against TRL's frozen copy
    assert _changed(_weights(tiny_model), _weights(out))
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
@_skip_without("online-dpo")
@pytest.mark.parametrize("judge", ["functions", "reward-model"])
def test_online_dpo_smoke(judge, tiny_model, tmp_path, request):
    from transformers import AutoModelForCausalLM

    extra = []
    if judge == "reward-model":
        extra = ["reward.functions=[]", "reward.weights=null", f"reward.model={request.getfixturevalue('reward_model')}"]
    out, _ = _run(TINY / "online-dpo.yaml", tmp_path, "trainer.max_steps=2",
                  "data.train={path: builtin:demo/train.jsonl, limit: 8}", *extra)
    logs = _train_logs(out)
    assert len(logs) == 2 and all(isinstance(m["loss"], float) for m in logs)
    assert all(isinstance(m["objective/scores"], float) for m in logs)  # the judge's scores of the samples
    assert _changed(_weights(tiny_model), _weights(out))
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
def test_pairs_writes_best_against_worst_that_dpo_can_read(tiny_model, tmp_path, reward_model):
    from dpo_cli.data.load import load_training_data

    out = tmp_path / "pairs"
    result = train_stage(load_recipe(TINY / "pairs.yaml", [
        f"output_dir={out}", "data.train={path: builtin:demo/train.jsonl, limit: 6}",
        "data.eval={path: builtin:demo/eval.jsonl, limit: 2}", "sampling.max_new_tokens=8", "sampling.batch_size=4",
        "reward.functions=[]", "reward.weights=null", f"reward.model={reward_model}"]))
    figures = result.manifest["pairs"]
    assert result.manifest["status"] == "completed" and figures["prompts"] == 6 and figures["samples"] == 24
    assert figures["pairs"] + figures["ties"] + figures["prompts_too_few_samples"] == 6
    assert figures["heldout"]["prompts"] == 2 and figures["heldout"]["samples"] == 8
    assert figures["mean_reward_chosen"] > figures["mean_reward_rejected"]

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(len(s["samples"]) == 4 for s in samples)
    for line in samples:
        if line.get("chosen") is not None:
            rewards = [s["reward"] for s in line["samples"] if s["text"]]
            assert line["samples"][line["chosen"]]["reward"] == max(rewards)
            assert line["samples"][line["rejected"]]["reward"] == min(rewards)
    rows, _ = load_training_data(str(out / "pairs.jsonl"), "preference")  # TRL's conversational pairs, checked
    assert len(rows) == figures["pairs"] and rows[0]["prompt"][0]["role"] == "user"
    assert rows[0]["chosen"][0]["role"] == "assistant"


def test_pairs_drops_ties_empty_and_unscored_samples_and_counts_them():
    from collections import Counter

    from dpo_cli.train.stages.pairs import _pair

    def record(*samples):
        return {"prompt": "Q", "samples": [{"text": t, "finished": f, "reward": r} for t, f, r in samples]}

    counts = Counter()
    nan = float("nan")
    pair = _pair(record(("a", True, 1.0), ("b", False, 3.0), ("", True, 9.0), ("c", True, nan)), counts)
    assert pair == {"prompt": "Q", "chosen": "b", "rejected": "a"}
    assert _pair(record(("a", True, 2.0), ("b", True, 2.0)), counts) is None
    assert _pair(record(("a", True, 2.0), ("", True, 5.0)), counts) is None
    assert counts == Counter(samples=8, unfinished_samples=1, empty_samples=2, unscored_samples=1, ties=1,
                             prompts_too_few_samples=1)
    messages = [{"role": "user", "content": "Q"}]
    pair = _pair({"prompt": messages, "samples": [{"text": "x", "finished": True, "reward": 0.0},
                                                  {"text": "y", "finished": True, "reward": 1.0}]}, counts)
    assert pair["chosen"] == [{"role": "assistant", "content": "y"}] and pair["prompt"] == messages


@pytest.mark.slow
def test_pairs_with_every_sample_tied_fails_and_says_so(tiny_model, tmp_path, monkeypatch):
    from dpo_cli.train.stages.pairs import NoPairs

    (tmp_path / "flat.py").write_text("def same(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(TINY / "pairs.yaml", [f"output_dir={tmp_path / 'out'}", "reward.functions=[flat.py:same]",
                                               "reward.weights=null", "data.train={path: builtin:demo/train.jsonl, "
                                               "limit: 3}", "sampling.max_new_tokens=4"])
    with pytest.raises(NoPairs, match="no pairs: every prompt's samples tied or were unusable"):
        train_stage(recipe)
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    made = manifest["pairs"]
    assert manifest["status"] == "failed" and made["ties"] >= 1 and made["ties"] + made["prompts_too_few_samples"] == 3
    assert not (tmp_path / "out" / "pairs.jsonl").exists()
