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
    assert slow["ref_model"] == {"precompute": False} and slow["trainer"]["use_liger_kernel"] is False
    assert "ref_model" not in bench.recipe(args, "dpo-cli-defaults", tmp_path)
    plans = {}
    for variant in bench.VARIANTS:
        (tmp_path / variant).mkdir()
        plans[variant] = bench.plan_bytes(args, variant, tmp_path / variant)
    # 60 steps x 8 rows cover the 300 pairs: the defaults precompute, which drops the reference copy and forward
    assert plans["dpo-cli-defaults"][1]["ref_model.precompute"] is True
    assert plans["dpo-cli-slow"][1]["ref_model.precompute"] is False
    assert plans["dpo-cli-defaults"][0] < plans["dpo-cli-slow"][0] == plans["plain-trl"][0]
    assert json.loads((tmp_path / "plain-trl" / "recipe.json").read_text())["ref_model"] == {"precompute": False}
