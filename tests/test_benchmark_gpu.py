"""benchmarks/gpu_dpo.py needs a GPU to run; its arguments, recipes, plans and arithmetic are checked here on CPU."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_dpo", REPO / "benchmarks" / "gpu_dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_and_arguments(bench, capsys):
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0 and "--gradient-checkpointing" in capsys.readouterr().out
    args = bench.parse_args(["--shape", "qwen2.5-7b", "--hidden", "512", "--batch", "2", "--lora", "16"])
    config = bench.model_config(args)
    assert config["hidden_size"] == 512 and config["num_hidden_layers"] == 28 and config["vocab_size"] == 152064
    assert bench.trainer_settings(args)["per_device_train_batch_size"] == 2
    assert bench.plan_error(110, 100) == pytest.approx(0.10) and bench.plan_error(None, 100) is None
    assert bench.loss_gap([0.69, 0.5], [0.69, 0.4]) == pytest.approx(0.25)


def test_the_variants_plan_with_and_without_the_fast_defaults(bench, tiny_model, tmp_path):
    from transformers import Qwen2Config

    from dpo_cli.core.builtins import asset_path

    args = bench.parse_args(["--work", str(tmp_path), "--hidden", "64", "--intermediate", "128", "--layers", "2",
                             "--heads", "4", "--kv-heads", "2", "--vocab", "4096", "--steps", "60"])
    Qwen2Config(**bench.model_config(args), dtype="bfloat16").save_pretrained(tmp_path / "model")
    rows = asset_path("demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    slow = bench.recipe(args, "dpo-cli-slow", tmp_path)
    assert slow["ref_model"]["precompute"] is False and slow["trainer"]["use_liger_kernel"] is False
    # the defaults decide precompute themselves, each run with a fresh cache: a later round used to load the log-probs
    # its first round had cached, mixing precomputing and cached runs in one median
    defaults = [bench.recipe(args, "dpo-cli-defaults", tmp_path / f"dpo-cli-defaults-{round_}") for round_ in (0, 1)]
    assert [d["ref_model"] for d in defaults] == [{"cache_dir": str(tmp_path / f"dpo-cli-defaults-{round_}" / "ref-cache")}
                                                  for round_ in (0, 1)]
    plans = {}
    for variant in bench.VARIANTS:
        (tmp_path / variant).mkdir()
        plans[variant] = bench.plan_bytes(args, variant, tmp_path / variant)
    # 60 steps x 8 rows cover the 300 pairs: the defaults precompute, which drops the reference copy and forward
    assert plans["dpo-cli-defaults"][1]["ref_model.precompute"] is True
    assert plans["dpo-cli-slow"][1]["ref_model.precompute"] is False
    assert plans["dpo-cli-defaults"][0] < plans["dpo-cli-slow"][0] == plans["plain-trl"][0]
    assert json.loads((tmp_path / "plain-trl" / "recipe.json").read_text())["ref_model"]["precompute"] is False


def test_a_precomputing_run_pays_for_its_reference_pass(bench):
    """TRL precomputes in the trainer's constructor, outside train_runtime: its time and forward FLOPs count."""
    live = {"steps": 60, "runtime_s": 30.0, "num_tokens": 30_000}
    precomputed = {"steps": 60, "runtime_s": 20.0, "num_tokens": 30_000, "reference_pass_s": 10.0,
                   "reference_pass_tokens": 50_000}
    assert bench.rates(live, 8, 2, 1e6) == pytest.approx((2.0, 1000.0, 8e-3))
    steps, tokens, mfu = bench.rates(precomputed, 6, 2, 1e6)
    assert (steps, tokens) == pytest.approx((2.0, 1000.0))  # not 3 steps/s: the pass took a third of the time
    assert mfu == pytest.approx((30_000 * 6 + 50_000 * 2) / 30 / 1e6)
    assert bench.rates(live, 8, 2, None)[2] is None
    rows = {"prompt_ids": [[1, 2, 3], [1] * 10], "chosen_ids": [[4, 5], [2] * 10], "rejected_ids": [[6], [3] * 10]}
    assert bench.pass_tokens(rows, 16) == (5 + 4) + (16 + 16)
