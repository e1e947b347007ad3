"""Stages without training: golden TRL config mappings, loss types, reward specs and each stage's bad inputs."""

from __future__ import annotations

import importlib.util
import math

import pytest

from conftest import REPO
from dpo_cli.core.errors import DataError, RecipeError
from dpo_cli.runner.run import train
from dpo_cli.train.config import build_config
from dpo_cli.train.device import DevicePlan
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.stages import unavailable

CPU = DevicePlan("cpu", 0, "fp32", "test")
TINY = REPO / "recipes" / "tiny"


def _config(path, *overrides):
    return build_config(load_recipe(path, list(overrides)), CPU)


def test_sft_recipe_maps_to_sft_config():
    config = _config(TINY / "sft.yaml", "output_dir=/tmp/x")
    assert type(config).__name__ == "SFTConfig"
    assert (config.learning_rate, config.max_steps, config.max_length, config.per_device_train_batch_size) == \
        (1e-3, 15, 96, 16)
    assert config.use_cpu and not config.bf16 and config.seed == 42 and config.report_to == []


def test_dpo_loss_mix_and_its_knobs_reach_dpo_config():
    # every value differs from DPOConfig's default (beta 0.1, label_smoothing 0, ld_alpha None, reverse_kl), so a
    # key that did not reach the config would fail here
    config = _config(TINY / "dpo.yaml", "trainer.label_smoothing=0.1", "trainer.ld_alpha=0.5",
                     "trainer.f_divergence_type=js_divergence", "trainer.beta=0.3")
    assert config.loss_type == ["sigmoid", "bco_pair", "sft"]
    assert config.loss_weights == [0.8, 0.2, 1.0]
    assert (config.label_smoothing, config.ld_alpha, config.f_divergence_type, config.beta) == \
        (0.1, 0.5, "js_divergence", 0.3)


def test_one_loss_type_given_as_a_string_becomes_trls_list():
    assert _config(TINY / "dpo.yaml", "trainer.loss_type=ipo", "trainer.loss_weights=null").loss_type == ["ipo"]


def test_kto_and_reward_recipes_map_to_their_configs():
    # kto.yaml's beta and desirable_weight are KTOConfig's defaults (0.1, 1.0): other values show they reach TRL
    kto = _config(TINY / "kto.yaml", "trainer.beta=0.3", "trainer.desirable_weight=1.5")
    assert type(kto).__name__ == "KTOConfig" and (kto.beta, kto.desirable_weight, kto.max_steps) == (0.3, 1.5, 20)
    reward = _config(TINY / "reward.yaml")
    assert type(reward).__name__ == "RewardConfig" and (reward.num_train_epochs, reward.max_length) == (2, 96)


def test_grpo_reward_weights_come_from_the_reward_section():
    config = _config(TINY / "grpo.yaml")
    assert type(config).__name__ == "GRPOConfig"
    assert config.reward_weights == [1.0, 0.5]
    assert (config.num_generations, config.max_completion_length, config.max_steps) == (4, 24, 4)


def test_unknown_dpo_loss_type_lists_the_ones_trl_knows():
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY / "dpo.yaml", ["trainer.loss_type=[sigmoid, apo_zeroo]", "trainer.loss_weights=[1, 1]"])
    message = str(err.value)
    assert "command-line override" in message and "trainer.loss_type" in message
    assert "'apo_zeroo' (entry 2 of the list)" in message and "did you mean 'apo_zero'" in message
    for known in ("sigmoid", "ipo", "hinge", "robust", "sft", "apo_zero", "discopop"):
        assert known in message


def test_unknown_loss_type_in_the_file_names_line(write_recipe):
    text = (TINY / "dpo.yaml").read_text().replace("loss_type: [sigmoid, bco_pair, sft]", "loss_type: [dpo, x, y]")
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: field 'trainer.loss_type': loss type 'dpo'"):
        load_recipe(write_recipe(text))


def test_loss_weights_must_match_loss_types():
    with pytest.raises(RecipeError, match="field 'trainer.loss_weights': .*Got 2 weights for 3 loss types"):
        load_recipe(TINY / "dpo.yaml", ["trainer.loss_weights=[1, 1]"])


def test_grpo_loss_type_is_checked_too():
    with pytest.raises(RecipeError, match="loss type 'grpoo'.*did you mean 'grpo'.*it knows: .*dr_grpo"):
        load_recipe(TINY / "grpo.yaml", ["trainer.loss_type=grpoo"])


@pytest.mark.skipif(unavailable("ppo") is None, reason="this TRL still has PPO")
def test_ppo_on_a_newer_trl_fails_at_load_naming_the_extra():
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY / "ppo.yaml")
    message = str(err.value)
    assert "ppo.yaml:" in message and "field 'stage'" in message
    assert "removed in 1.13" in message and "pip install 'dpo-cli[ppo]'" in message


def test_reward_section_only_for_stages_that_use_it():
    with pytest.raises(RecipeError, match="stage dpo does not use a reward: section"):
        load_recipe(TINY / "dpo.yaml", ["reward.model=runs/rm"])


# --- GRPO reward functions ----------------------------------------------------------------------------------------

GRPO = """\
stage: grpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: {data}}}
reward:
  functions:
{functions}
trainer: {{max_steps: 1, per_device_train_batch_size: 4, num_generations: 4, max_completion_length: 8,
          logging_steps: 1, save_strategy: "no"}}
output_dir: {out}
"""


def _grpo(write_recipe, tmp_path, functions: str, data: str = "builtin:demo/train.jsonl"):
    return write_recipe(GRPO.format(functions=functions, data=data, out=tmp_path / "out"))


def test_reward_function_file_that_does_not_exist(write_recipe, tmp_path):
    path = _grpo(write_recipe, tmp_path, "    - length\n    - rewards/missing.py:score")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "recipe.yaml:7: field 'reward.functions.1'" in message
    assert "reward function file rewards/missing.py does not exist" in message


def test_reward_function_missing_from_its_module(write_recipe, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def brevity(completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="my_rewards.py has no function 'brevit'; did you mean 'brevity'"):
        load_recipe(_grpo(write_recipe, tmp_path, "    - my_rewards.py:brevit"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RecipeError, match="cannot import module 'no_such_rewards'"):
        load_recipe(_grpo(write_recipe, tmp_path, "    - no_such_rewards:score"))
    load_recipe(_grpo(write_recipe, tmp_path, "    - my_rewards:brevity\n    - my_rewards.py:brevity"))


@pytest.mark.parametrize("entry, message", [
    ("- lenght", "unknown reward function 'lenght'; did you mean 'length'"),
    ("- regex", "reward 'regex' needs its pattern"),
    ("- regex: {pattern: '('}", "is not a regular expression"),
    ("- length: {target: 0}", "target must be a positive number"),
    ("- length: {targt: 10}", "has no option 'targt'; did you mean 'target'"),
    ("- contains_answer: {column: 3}", "option 'column' must be str"),
])
def test_bad_builtin_reward_entries(write_recipe, tmp_path, entry, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_grpo(write_recipe, tmp_path, "    " + entry))


def test_grpo_without_reward_functions(write_recipe, tmp_path):
    text = GRPO.format(functions="", data="builtin:demo/train.jsonl", out=tmp_path).replace(
        "reward:\n  functions:\n\n", "")
    with pytest.raises(RecipeError, match="stage grpo needs reward functions"):
        load_recipe(write_recipe(text))


def test_reward_weights_must_match_functions(write_recipe, tmp_path):
    path = _grpo(write_recipe, tmp_path, "    - length\n  weights: [1.0, 2.0]")
    with pytest.raises(RecipeError, match="reward.weights has 2 entries for 1 reward functions"):
        load_recipe(path)


def test_builtin_rewards_score_completions():
    from dpo_cli.train.rewards import ContainsAnswerReward, LengthReward, RegexReward

    assert LengthReward(target=10)(completions=["x" * 10, "x" * 15, "x" * 30]) == [1.0, 0.5, 0.0]
    assert LengthReward(target=2, unit="words")(completions=["a b", "a b c d"]) == [1.0, 0.0]
    conversational = [[{"role": "assistant", "content": "The answer is 4."}], [{"role": "assistant", "content": "?"}]]
    assert RegexReward(r"answer is \d")(completions=conversational) == [1.0, 0.0]
    assert RegexReward(r"The .*\.", full=True)(completions=conversational) == [1.0, 0.0]
    assert ContainsAnswerReward()(completions=["it is  PARIS", "london"], answer=["paris", "Paris"]) == [1.0, 0.0]


def test_guard_names_the_function_and_batch():
    from dpo_cli.train.rewards import GuardedReward, RewardFunctionError

    class State:
        global_step = 6

    def explode(completions, **kwargs):
        raise KeyError("answer")

    guarded = GuardedReward("explode", explode)
    with pytest.raises(RewardFunctionError, match=r"reward function 'explode', batch 1 \(training step 7\) "
                                                  r"raised KeyError: 'answer'"):
        guarded(["p"], ["c"], trainer_state=State())

    short = GuardedReward("short", lambda completions, **kw: [1.0])
    short(["p"], ["c"])
    with pytest.raises(RewardFunctionError, match="'short', batch 2 returned 1 values for 3 completions"):
        short(["p"] * 3, ["c"] * 3)

    nan = GuardedReward("nan", lambda completions, **kw: [1.0, math.nan])
    with pytest.raises(RewardFunctionError, match="'nan', batch 1 returned nan for completion 2 of 2"):
        nan(["p", "p"], ["a", "b"])

    text = GuardedReward("text", lambda completions, **kw: ["high"])
    with pytest.raises(RewardFunctionError, match="returned 'high' for completion 1, not a number"):
        text(["p"], ["c"])


def test_guard_passes_only_the_arguments_a_function_takes():
    from dpo_cli.train.rewards import GuardedReward

    seen = {}

    def narrow(completions, answer):
        seen["answer"] = answer
        return [None, 2]

    assert GuardedReward("narrow", narrow)(["p", "q"], ["a", "b"], answer=["x", "y"], trainer_state=None) == \
        [None, 2.0]
    assert seen["answer"] == ["x", "y"]


# --- data given to the wrong stage: the message says what the stage reads and what the file holds --------------------

def _recipe_for(stage_file, data, tmp_path, *extra):
    return load_recipe(stage_file, [f"data.train={data}", "data.eval=null", f"output_dir={tmp_path / 'out'}",
                                    *extra])


def test_prompt_only_data_given_to_dpo(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "answer": "4"}\n')
    with pytest.raises(DataError) as err:
        train(_recipe_for(TINY / "dpo.yaml", data, tmp_path))
    message = str(err.value)
    assert f"{data}:1" in message
    assert "stage dpo reads preference pairs (prompt, chosen, rejected)" in message
    assert "the row holds prompt-only rows" in message


def test_preference_data_without_a_prompt_column_given_to_grpo(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"chosen": "Paris is the capital.", "rejected": "No idea."}\n')
    with pytest.raises(DataError) as err:
        train(_recipe_for(TINY / "grpo.yaml", data, tmp_path))
    message = str(err.value)
    assert f"{data}:1" in message and "stage grpo reads prompts: a prompt column" in message
    assert "plain-text rows need a string 'prompt'" in message  # pairs without one: the column that is missing


def test_prompt_only_data_given_to_sft(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Hello"}\n')
    with pytest.raises(DataError, match="stage sft reads supervised rows.*there is no response to learn"):
        train(_recipe_for(TINY / "sft.yaml", data, tmp_path))


def test_contains_answer_without_the_column_stops_before_training(tmp_path, tiny_model):
    recipe = load_recipe(TINY / "grpo.yaml", [f"output_dir={tmp_path / 'out'}", "reward.functions=[contains_answer]",
                                              "reward.weights=null"])
    with pytest.raises(RecipeError, match="compares with column 'answer', which the training data does not have "
                                          r"\(it has: prompt\)"):
        train(recipe)


# --- ORPO, SimPO, CPO, RLOO, online DPO, pairs: mappings and rules -------------------------------------------------

NEW_STAGES = ("orpo", "simpo", "cpo", "rloo", "online-dpo", "pairs")


def _needs(stage: str):
    return pytest.mark.skipif(unavailable(stage) is not None, reason=f"this TRL has no trainer for {stage}")


@_needs("orpo")
def test_orpo_recipe_maps_to_orpo_config_with_no_reference():
    from dpo_cli.train.stages import get_stage

    recipe = load_recipe(TINY / "orpo.yaml", ["trainer.beta=0.25"])
    config = build_config(recipe, CPU)
    assert type(config).__name__ == "ORPOConfig" and (config.beta, config.max_length, config.max_steps) == \
        (0.25, 96, 20)
    assert get_stage("orpo").reference(recipe).kind == "none"


@_needs("simpo")
def test_simpo_sets_its_loss_and_no_sft_term_and_lets_cpo_alpha_through():
    config = _config(TINY / "simpo.yaml", "trainer.simpo_gamma=0.8")  # simpo.yaml's 0.5 is CPOConfig's default
    assert type(config).__name__ == "CPOConfig"
    assert (config.loss_type, config.cpo_alpha, config.simpo_gamma, config.beta) == ("simpo", 0.0, 0.8, 2.0)
    assert _config(TINY / "simpo.yaml", "trainer.cpo_alpha=0.5").cpo_alpha == 0.5  # CPO-SimPO
    with pytest.raises(RecipeError, match=r"field 'trainer.loss_type': stage simpo sets loss_type: simpo itself; "
                                          r"for CPO's hinge loss use stage: cpo"):
        load_recipe(TINY / "simpo.yaml", ["trainer.loss_type=hinge"])


@_needs("cpo")
def test_cpo_loss_types_are_read_from_trl():
    assert _config(TINY / "cpo.yaml", "trainer.loss_type=ipo").loss_type == "ipo"
    with pytest.raises(RecipeError, match="loss type 'hindge' is not one TRL .* knows.*did you mean 'hinge'"):
        load_recipe(TINY / "cpo.yaml", ["trainer.loss_type=hindge"])


def test_rloo_reads_the_grpo_reward_section_and_keeps_a_reference_while_beta_is_on():
    from dpo_cli.train.stages import get_stage

    recipe = load_recipe(TINY / "rloo.yaml")
    config = build_config(recipe, CPU)
    assert type(config).__name__ == "RLOOConfig" and config.reward_weights == [1.0, 0.5]
    reference = get_stage("rloo").reference
    assert reference(recipe).kind == "trainer-copy"  # TRL's default beta is 0.05
    assert reference(load_recipe(TINY / "rloo.yaml", ["trainer.beta=0"])).kind == "none"
    assert reference(load_recipe(TINY / "rloo.yaml", ["lora.r=4"])).kind == "shared"
    with pytest.raises(RecipeError, match="reward.model and reward.value_model are for ppo; in rloo list the reward "
                                          "model as a function"):
        load_recipe(TINY / "rloo.yaml", ["reward.model=runs/rm"])


@_needs("online-dpo")
def test_online_dpo_takes_beta_as_a_number_and_weights_from_the_reward_section():
    config = _config(TINY / "online-dpo.yaml", "trainer.beta=0.2")
    assert type(config).__name__ == "OnlineDPOConfig"
    assert (config.beta, config.reward_weights, config.max_new_tokens) == (0.2, [1.0, 0.5], 24)


@_needs("online-dpo")
@pytest.mark.parametrize("overrides, field, message", [
    (["reward=null"], "reward", "stage online-dpo needs a judge to pick chosen and rejected: reward: {model: PATH}"),
    (["reward.model=runs/rm"], "reward.model", "give reward.model or reward.functions, not both"),
    (["trainer.reward_model_path=runs/rm"], "trainer.reward_model_path",
     "set the judge with reward.model or reward.functions, not trainer.reward_model_path"),
    (["reward.value_model=runs/v"], "reward.value_model", "reward.value_model is for ppo"),
])
def test_online_dpo_judge_rules(overrides, field, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY / "online-dpo.yaml", overrides)
    assert f"field '{field}': {message}" in str(err.value)


def test_a_lone_reward_model_judges_online_dpo_and_pairs():
    from dpo_cli.train.stages.checks import judge_specs

    for name in ("online-dpo", "pairs"):
        if unavailable(name):
            continue
        recipe = load_recipe(TINY / f"{name}.yaml", ["reward.functions=[]", "reward.weights=null",
                                                     "reward.model=runs/rm"])
        specs = judge_specs(recipe, lambda path, message: AssertionError(message))
        assert [(s.name, s.options) for s in specs] == [("reward_model", {"path": "runs/rm"})]


def test_pairs_sampling_keys_and_their_rules(write_recipe):
    recipe = load_recipe(TINY / "pairs.yaml", ["sampling.temperature=0.7"])
    assert (recipe.sampling.num_samples, recipe.sampling.temperature, recipe.sampling.max_new_tokens,
            recipe.sampling.batch_size, recipe.sampling.engine) == (4, 0.7, 24, 16, "transformers")
    text = (TINY / "pairs.yaml").read_text().replace("num_samples: 4", "num_samples: 1")
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: field 'sampling.num_samples': sampling.num_samples is "
                                          r"1: a pair needs at least 2 samples per prompt"):
        load_recipe(write_recipe(text))
    with pytest.raises(RecipeError, match="stage pairs makes data and trains nothing, so it has no trainer: section; "
                                          "its settings go under sampling:"):
        load_recipe(TINY / "pairs.yaml", ["trainer.max_steps=3"])
    with pytest.raises(RecipeError, match="stage pairs trains nothing, so a lora: section has no use"):
        load_recipe(TINY / "pairs.yaml", ["lora.r=4"])
    with pytest.raises(RecipeError, match="stage dpo does not use a sampling: section \\(pairs does\\)"):
        load_recipe(TINY / "dpo.yaml", ["sampling.num_samples=4"])
    load_recipe(TINY / "pairs.yaml", ["quantization.bits=4"])  # sampling from 4-bit weights needs no adapter


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_pairs_with_vllm_asked_for_but_not_installed():
    with pytest.raises(RecipeError, match="field 'sampling.engine': sampling.engine: vllm needs vLLM, which is not "
                                          "installed"):
        load_recipe(TINY / "pairs.yaml", ["sampling.engine=vllm"])


@pytest.mark.parametrize("loss, hint", [
    ("kto_pair", "TRL removed kto_pair from its DPO losses; for KTO use stage: kto with unpaired rows (dpo-cli "
                 "convert-data --to kto, or give it pairs: it splits them), or loss_type: apo_zero"),
    ("orpo", "ORPO is a stage of its own with no reference model: stage: orpo"),
    ("simpo", "SimPO is a stage of its own with no reference model: stage: simpo"),
])
def test_llama_factory_pref_loss_names_tell_what_replaces_them(loss, hint):
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY / "dpo.yaml", [f"trainer.loss_type=[sigmoid, {loss}]", "trainer.loss_weights=[1, 1]"])
    assert f"field 'trainer.loss_type': loss type '{loss}': {hint}" in str(err.value)


def test_an_experimental_trainer_missing_from_trl_is_named_with_the_versions_that_have_it(monkeypatch, tmp_path):
    from dpo_cli.train.stages import checks

    # a fresh install: no cache of TRL's config fields says the stage was there
    monkeypatch.setenv("DPO_CLI_HOME", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(checks.importlib.util, "find_spec",
                        lambda name, *a: None if name == "trl.experimental.orpo" else real(name, *a))
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY / "orpo.yaml")
    message = str(err.value)
    assert "orpo.yaml:" in message and "field 'stage'" in message
    assert "stage orpo needs TRL's ORPOTrainer (trl.experimental.orpo), which this environment's trl" in message
    assert "TRL 1.0.0 and 1.16.0 have it" in message and "pip install 'trl==1.16.0'" in message


def test_the_checked_trl_releases_have_every_experimental_stage():
    """On the TRL releases CI runs (the lowest and the newest), no stage is refused: a new TRL that drops one fails
    here first."""
    from importlib import metadata

    from dpo_cli.train.stages.checks import CHECKED_TRL

    if metadata.version("trl") not in CHECKED_TRL:
        pytest.skip(f"trl {metadata.version('trl')} is not one of {CHECKED_TRL}")
    assert {name: unavailable(name) for name in NEW_STAGES} == dict.fromkeys(NEW_STAGES)


def test_prompt_only_data_given_to_orpo_and_pairs_given_to_online_dpo(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 2+2?"}\n')
    with pytest.raises(DataError, match="stage orpo reads preference pairs .*the row holds prompt-only rows"):
        train(_recipe_for(TINY / "orpo.yaml", prompts, tmp_path))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"chosen": "Paris is the capital.", "rejected": "No idea."}\n')
    with pytest.raises(DataError, match="stage online-dpo reads prompts: a prompt column"):
        train(_recipe_for(TINY / "online-dpo.yaml", pairs, tmp_path))
