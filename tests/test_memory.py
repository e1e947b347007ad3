"""The dry-run memory plan: bytes per item follow the recipe's strategy; suggestions ranked when over memory."""

from __future__ import annotations

from typer.testing import CliRunner

from dpo_cli.recipe.load import load_recipe

BASE = """\
stage: dpo
model:
  name_or_path: builtin:tiny-chat
data:
  train: builtin:demo/train.jsonl
trainer:
  per_device_train_batch_size: 4
  max_length: 128
  gradient_checkpointing: false
"""


def plan_for(write_recipe, extra: str = "", name: str = "r.yaml"):
    from dpo_cli.train.device import plan_device
    from dpo_cli.train.memory import estimate_memory

    recipe = load_recipe(write_recipe(BASE + extra, name))
    memory = estimate_memory(recipe, plan_device(recipe.trainer))
    return {what: size for what, size, _ in memory.rows}, memory


def test_reference_bytes_follow_strategy(tiny_model, write_recipe):
    full, _ = plan_for(write_recipe)
    params = 210_240  # the tiny model's parameters (tied embeddings counted once), float32
    assert full["policy weights"] == params * 4 and full["reference"] == params * 4
    assert full["gradients"] == params * 4 and full["optimizer state"] == params * 8
    lora, _ = plan_for(write_recipe, "lora: {r: 4}\n", "lora.yaml")
    assert lora["reference"] == 0 and lora["policy weights"] == full["policy weights"]
    assert 0 < lora["gradients"] < full["gradients"] / 10
    separate, _ = plan_for(write_recipe, "lora: {r: 4}\nref_model: {name_or_path: builtin:tiny-chat}\n", "sep.yaml")
    assert separate["reference"] == full["policy weights"]
    quantized_ref, _ = plan_for(write_recipe, "lora: {r: 4}\nref_model: {quantization: {bits: 4}}\n", "qref.yaml")
    assert 0 < quantized_ref["reference"] < separate["reference"]
    precomputed, _ = plan_for(write_recipe, "ref_model: {precompute: true}\n", "pre.yaml")
    assert precomputed["reference"] == 0 and precomputed["gradients"] == full["gradients"]
    qlora, _ = plan_for(write_recipe, "lora: {r: 4}\nquantization: {bits: 4}\n", "qlora.yaml")
    assert qlora["policy weights"] < full["policy weights"] and qlora["reference"] == 0


def test_activations_shrink_with_checkpointing_and_shorter_sequences(tiny_model, write_recipe):
    base, _ = plan_for(write_recipe)
    again, _ = plan_for(write_recipe, "", "same.yaml")
    from dpo_cli.train.device import plan_device
    from dpo_cli.train.memory import estimate_memory

    recipe = load_recipe(write_recipe(BASE, "a.yaml"), ["trainer.gradient_checkpointing=true"])
    with_gc = {w: b for w, b, _ in estimate_memory(recipe, plan_device(recipe.trainer)).rows}
    recipe = load_recipe(write_recipe(BASE, "b.yaml"), ["trainer.max_length=64"])
    shorter = {w: b for w, b, _ in estimate_memory(recipe, plan_device(recipe.trainer)).rows}
    assert with_gc["activations (estimate)"] < base["activations (estimate)"]
    assert shorter["activations (estimate)"] == base["activations (estimate)"] // 2
    assert again == base  # deterministic: no weights, no randomness


def test_suggestions_ranked_by_saving_when_over_memory(tiny_model, write_recipe, monkeypatch):
    from dpo_cli.train import memory as memory_module

    monkeypatch.setattr(memory_module, "device_memory", lambda plan: (1024, "a very small device"))
    _, memory = plan_for(write_recipe)
    assert memory.over
    savings = [saving for _, saving in memory.suggestions]
    assert savings == sorted(savings, reverse=True) and all(s > 0 for s in savings)
    changes = " | ".join(change for change, _ in memory.suggestions)
    for expected in ("lora", "ref_model.precompute", "quantization", "max_length", "gradient_checkpointing"):
        assert expected in changes


def test_no_suggestions_when_it_fits(tiny_model, write_recipe):
    _, memory = plan_for(write_recipe)
    assert not memory.over and memory.suggestions == []


def test_dry_run_prints_memory_plan_and_shared_reference(tiny_model, write_recipe, monkeypatch):
    from dpo_cli.cli import app
    from dpo_cli.train import memory as memory_module

    monkeypatch.setattr(memory_module, "device_memory", lambda plan: (4096, "a very small device"))
    path = write_recipe(BASE + "lora: {r: 4}\n", "dry.yaml")
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "shared: the policy with its LoRA adapter disabled" in out
    for row in ("policy weights", "reference", "gradients", "optimizer state", "activations", "logits", "total"):
        assert row in out
    assert "over" in out and "1. " in out


def test_dry_run_without_reachable_model_still_prints_plan(tiny_model, write_recipe):
    from dpo_cli.cli import app

    path = write_recipe(BASE.replace("builtin:tiny-chat", "no-such-org/no-such-model"), "offline.yaml")
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "memory plan unavailable" in result.output and "no-such-org/no-such-model" in result.output


def _rows(path, *overrides):
    from dpo_cli.train.device import plan_device
    from dpo_cli.train.memory import estimate_memory

    recipe = load_recipe(path, list(overrides))
    return {what: size for what, size, _ in estimate_memory(recipe, plan_device(recipe.trainer)).rows}


def _kv_bytes(model_dir, sequences: int, tokens: int) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    width = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    return 2 * config.num_hidden_layers * sequences * tokens * width * 4  # keys and values, float32


def test_pairs_holds_weights_generation_buffers_and_its_judge_nothing_for_training(tiny_model):
    from conftest import REPO

    rows = _rows(REPO / "recipes" / "tiny" / "pairs.yaml", "reward.functions=[]", "reward.weights=null",
                 f"reward.model={tiny_model}")
    params = 210_240
    # 16 prompts per generate call x 4 samples, each up to 512 prompt tokens (assumed) + 24 new ones
    assert rows == {"policy weights": params * 4, "reference": 0,
                    "generation (KV cache)": _kv_bytes(tiny_model, 64, 512 + 24), "reward model": params * 4}


def test_reference_free_and_online_stages_count_what_they_hold(tiny_model):
    from conftest import REPO
    from dpo_cli.train.stages import unavailable

    tiny = REPO / "recipes" / "tiny"
    params = 210_240
    dpo = _rows(tiny / "dpo.yaml", "trainer.gradient_checkpointing=false")
    for stage in ("orpo", "simpo", "cpo"):
        if unavailable(stage):
            continue
        rows = _rows(tiny / f"{stage}.yaml")
        assert rows["reference"] == 0 and rows["gradients"] == params * 4
        assert rows["activations (estimate)"] == dpo["activations (estimate)"]  # chosen and rejected, same batch
    if not unavailable("online-dpo"):
        online = _rows(tiny / "online-dpo.yaml")
        assert online["reference"] == params * 4  # TRL's frozen copy
        assert online["generation (KV cache)"] == _kv_bytes(tiny_model, 2 * 4, 512 + 24)  # two samples per prompt
    rloo = _rows(tiny / "rloo.yaml")
    assert rloo["reference"] == params * 4  # beta 0.05 by default
    assert rloo["generation (KV cache)"] == _kv_bytes(tiny_model, 8, 512 + 24)
    assert _rows(tiny / "rloo.yaml", "trainer.beta=0")["reference"] == 0
