"""Held-out evaluation figures on constructed cases with known answers, and dpo-cli eval on models."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

CHOSEN = ["Thank you, happy to help.", "Sure, here is the answer.", "Thank you for asking, sure."]
REJECTED = ["Whatever.", "No.", "Go away."]


def _rows():
    prompts = ["What is 32 plus 17?", "How do I say dog in English?", "Name a colour."]
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in zip(prompts, CHOSEN, REJECTED)]


def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


def _preferring_chosen(model, tokenizer):
    """A copy of ``model`` whose output layer adds +5 to the logit of every token found only in chosen answers.

    Each such token's log-prob rises under the copy and every other token's falls, so the implicit reward of every
    chosen answer is above that of its rejected answer: accuracy must be exactly 1.
    """
    import copy

    ids = lambda texts: {t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]}  # noqa
    only_chosen = sorted(ids(CHOSEN) - ids(REJECTED))
    policy = copy.deepcopy(model)
    old = policy.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[only_chosen] = 5.0
    policy.lm_head = head
    return policy


def test_a_model_made_to_prefer_chosen_scores_accuracy_one(tiny):
    from dpo_cli.evidence.metrics import preference_metrics
    from dpo_cli.train.scoring import kl_on_chosen, score_pairs

    model, tokenizer = tiny
    policy = _preferring_chosen(model, tokenizer)
    rows = _rows()
    metrics = preference_metrics(score_pairs(policy, tokenizer, rows), score_pairs(model, tokenizer, rows), beta=0.1)
    assert metrics["pairs"] == 3
    assert metrics["reward_accuracy"] == 1.0
    assert metrics["margin_quantiles"]["min"] > 0 and metrics["reward_margin"] > 0
    assert metrics["reward_chosen"] > 0 > metrics["reward_rejected"]
    assert kl_on_chosen(policy, model, tokenizer, rows)["kl_chosen_per_token"] > 0.01


def test_identical_policy_and_reference_score_margin_zero_and_kl_zero(tiny):
    from dpo_cli.evidence.metrics import preference_metrics
    from dpo_cli.train.scoring import kl_on_chosen, score_pairs

    model, tokenizer = tiny
    rows = _rows()
    scores = score_pairs(model, tokenizer, rows)
    metrics = preference_metrics(scores, score_pairs(model, tokenizer, rows), beta=0.1)
    assert metrics["reward_margin"] == 0.0 and metrics["reward_accuracy"] == 0.0
    assert metrics["margin_quantiles"]["min"] == metrics["margin_quantiles"]["max"] == 0.0
    assert metrics["margin_std"] == 0.0
    assert metrics["length_bias"]["r_squared"] is None  # nothing to explain
    kl = kl_on_chosen(model, model, tokenizer, rows)
    assert kl["kl_chosen_per_token"] == pytest.approx(0.0, abs=1e-7)
    # the scores are real: response lengths counted, log-probs negative
    assert (scores.chosen_tokens > 0).all() and (scores.chosen < 0).all()


def test_length_bias_recovers_a_margin_made_of_length():
    from dpo_cli.evidence.metrics import length_bias

    chosen_tokens = torch.tensor([10, 20, 5, 30])
    rejected_tokens = torch.tensor([12, 10, 5, 10])
    margin = 0.5 * (chosen_tokens - rejected_tokens).double() + 0.25
    bias = length_bias(margin, chosen_tokens, rejected_tokens)
    assert bias["r_squared"] == pytest.approx(1.0) and bias["margin_per_token"] == pytest.approx(0.5)
    assert bias["chosen_longer_fraction"] == 0.5
    unrelated = length_bias(torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.tensor([1, 1, 3, 3]), torch.tensor([0, 0, 0, 0]))
    assert unrelated["r_squared"] == pytest.approx(0.0)


def test_margin_distribution_quantiles_and_histogram():
    from dpo_cli.evidence.metrics import HISTOGRAM_BINS, margin_distribution

    dist = margin_distribution(torch.arange(11, dtype=torch.float64))  # 0..10
    assert dist["margin_quantiles"] == {"min": 0.0, "p10": 1.0, "p25": 2.5, "p50": 5.0, "p75": 7.5, "p90": 9.0,
                                        "max": 10.0}
    assert sum(dist["margin_histogram"]["counts"]) == 11 and len(dist["margin_histogram"]["counts"]) == HISTOGRAM_BINS
    nan = margin_distribution(torch.tensor([float("nan")]))
    assert nan["margin_quantiles"] is None  # weights gone NaN: no figures, not a crash


def test_reward_model_metrics_known_answer():
    from dpo_cli.evidence.metrics import reward_model_metrics
    from dpo_cli.train.scoring import PairScores

    scores = PairScores(torch.tensor([2.0, 1.0, 0.5, 3.0]), torch.tensor([1.0, 1.5, 0.0, 0.0]),
                        torch.tensor([4, 4, 4, 4]), torch.tensor([2, 2, 2, 2]))
    metrics = reward_model_metrics(scores)
    assert metrics["reward_accuracy"] == 0.75 and metrics["reward_margin"] == pytest.approx(1.0)


def _invoke(args):
    from typer.testing import CliRunner

    from dpo_cli.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_cli_eval_same_model_as_reference_gives_margin_zero(tiny_model, tmp_path):
    data = _write_pairs(tmp_path / "pairs.jsonl", _rows())
    result = _invoke(["eval", str(tiny_model), "--data", str(data), "--ref", str(tiny_model), "--json"])
    out = json.loads(result.stdout)
    assert out["kind"] == "policy" and out["data"]["pairs"] == 3
    m = out["metrics"]
    assert m["reward_margin"] == 0.0 and m["reward_accuracy"] == 0.0 and m["kl_chosen_per_token"] == 0.0
    assert set(m) >= {"logprob_accuracy", "logps_chosen", "logps_rejected", "margin_quantiles", "length_bias"}


def test_cli_eval_without_reference_reports_log_prob_figures_only(tiny_model, tmp_path):
    data = _write_pairs(tmp_path / "pairs.jsonl", _rows())
    result = _invoke(["eval", str(tiny_model), "--data", str(data)])
    assert "length-normalised" in result.stdout and "no reference model" in result.stdout


def test_cli_eval_of_a_model_needs_data(tiny_model):
    from typer.testing import CliRunner

    from dpo_cli.cli import app
    from dpo_cli.core.errors import InputError

    result = CliRunner().invoke(app, ["eval", str(tiny_model)])
    assert isinstance(result.exception, InputError) and "--data FILE" in str(result.exception)


def test_reward_model_pairwise_accuracy(tiny_model, tmp_path):
    """A (random) sequence-classification reward model: swapping chosen and rejected flips every win."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model, num_labels=1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "rm")
    rows = _rows()
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    results = []
    for name, pairs in (("rows", rows), ("swapped", swapped)):
        data = _write_pairs(tmp_path / f"{name}.jsonl", pairs)
        results.append(json.loads(_invoke(["eval", str(tmp_path / "rm"), "--data", str(data), "--json"]).stdout))
    assert all(r["kind"] == "reward_model" for r in results)
    plain, flipped = (r["metrics"] for r in results)
    assert plain["reward_accuracy"] + flipped["reward_accuracy"] == pytest.approx(1.0)
    assert plain["reward_margin"] == pytest.approx(-flipped["reward_margin"], abs=1e-5)


def test_compare_reads_prompts_from_text_and_json_lines(tmp_path):
    from dpo_cli.core.errors import DataError
    from dpo_cli.evidence.compare import read_prompts

    text = tmp_path / "prompts.txt"
    text.write_text("Say hi.\n\nName a colour.\nCount to three.\n")
    assert read_prompts(text, 2) == ["Say hi.", "Name a colour."]
    lines = tmp_path / "prompts.jsonl"
    lines.write_text('{"prompt": "Say hi."}\n{"prompt": [{"role": "user", "content": "Hello"}]}\n{"prompt": 3}\n')
    assert read_prompts(lines, 2) == ["Say hi.", [{"role": "user", "content": "Hello"}]]
    with pytest.raises(DataError, match=r"prompts.jsonl:3: field 'prompt': expected a text or a list of chat"):
        read_prompts(lines, 5)


def test_compare_needs_exactly_one_prompt_source(tmp_path):
    from typer.testing import CliRunner

    from dpo_cli.cli import app
    from dpo_cli.core.errors import InputError

    result = CliRunner().invoke(app, ["compare", "--tuned", str(tmp_path)])
    assert isinstance(result.exception, InputError) and "exactly one of --prompts FILE or --data FILE" in str(
        result.exception)


@pytest.mark.parametrize("a, b, shared", [
    ([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2, 3], 2), ([1, 2, 3], [1, 2, 3], 3), ([5], [6], 0), ([], [1], 0),
])
def test_common_prefix_length_counts_the_leading_items_two_sequences_share(a, b, shared):
    from dpo_cli.train.scoring import common_prefix_length

    assert common_prefix_length(a, b) == common_prefix_length(b, a) == shared
