"""The dry-run memory plan: bytes per item follow the recipe's strategy; suggestions ranked when over memory."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dpo_cli.train.recipe_load import load_recipe

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


def test_over_memory_names_the_largest_item_and_the_cheapest_fixes_first(tiny_model, write_recipe, monkeypatch):
    from dpo_cli.train import memory as memory_module

    monkeypatch.setattr(memory_module, "device_memory", lambda plan: (1024, "a very small device"))
    _, memory = plan_for(write_recipe)
    assert memory.over
    assert memory.largest == max(((w, b) for w, b, _ in memory.rows), key=lambda row: row[1])
    changes = [change for change, _, _ in memory.suggestions]
    assert all(saving > 0 for _, saving, _ in memory.suggestions)
    # cheapest first: a precomputed reference costs nothing, LoRA changes what is trained, max_length cuts data
    order = ["ref_model.precompute", "gradient_checkpointing", "per_device_train_batch_size", "lora:", "quantization",
             "max_length"]
    positions = [next(i for i, change in enumerate(changes) if key in change) for key in order]
    assert positions == sorted(positions), changes
    assert not any(fits for _, _, fits in memory.suggestions)  # 1 KiB: nothing alone makes it fit


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
    for row in ("policy weights", "reference", "gradients", "optimizer state", "activations", "LM head",
                "allocator overhead", "total"):
        assert row in out
    assert "over" in out and "1. " in out


def test_dry_run_without_reachable_model_still_prints_plan(tiny_model, write_recipe):
    from dpo_cli.cli import app

    path = write_recipe(BASE.replace("builtin:tiny-chat", "no-such-org/no-such-model"), "offline.yaml")
    result = CliRunner().invoke(app, ["train", str(path), "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "memory plan unavailable" in result.output and "no-such-org/no-such-model" in result.output


# Peaks measured on one H100 80GB (shared/gpu/MEASUREMENTS.md, 2026-11-22): DPO, max_length 1024, bf16, real data
# (mean 836 tokens; TRL pads each batch to its longest sequence, so the peak is a batch at max_length).
# (label, shape, batch, gradient checkpointing, Liger, precompute, adapter, measured GiB)
MEASURED = [
    ("0.5B full fine-tuning", "q05", 8, False, False, False, None, 27.83),
    ("0.5B Liger", "q05", 8, False, True, False, None, 21.59),
    ("0.5B precompute", "q05", 8, False, False, True, None, 26.89),
    ("0.5B Liger + precompute", "q05", 8, False, True, True, None, 20.66),
    ("0.5B LoRA r16", "q05", 8, False, False, False, "lora", 26.00),
    ("0.5B LoRA + Liger", "q05", 8, False, True, False, "lora", 21.12),
    ("0.5B QLoRA (weights upcast, as measured)", "q05", 8, False, False, False, "qlora-upcast", 36.28),
    ("0.5B LoRA + precompute", "q05", 8, False, False, True, "lora", 26.00),
    ("0.5B LoRA + Liger + precompute", "q05", 8, False, True, True, "lora", 21.10),
    ("7B LoRA r16", "q7b", 2, True, False, False, "lora", 17.08),
    ("7B QLoRA (weights upcast, as measured)", "q7b", 2, True, False, False, "qlora-upcast", 11.14),
    ("7B LoRA + Liger + precompute", "q7b", 2, True, True, True, "lora", 16.83),
]
SHAPES = {
    "q05": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "q7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


@pytest.fixture
def trl_1_16_lm_head(monkeypatch):
    """The rows were measured on TRL 1.16, whose DPO scores log-probs through a fused LM head in 4096 x 32768 tiles;
    an older TRL here (the floor CI runs) materialises the logits, and would be planned as such."""
    from dpo_cli.train import memory as memory_module

    monkeypatch.setattr(memory_module, "fused_lm_head_tokens", lambda: 4096)
    monkeypatch.setattr(memory_module, "fused_lm_head_vocab_chunk", lambda: 32768)


@pytest.fixture(scope="module")
def qwen_shapes(tmp_path_factory):
    """config.json of Qwen2.5-0.5B's and 7B's shapes: the plan builds the model on the meta device, no weights."""
    from transformers import Qwen2Config

    root = tmp_path_factory.mktemp("shapes")
    for name, shape in SHAPES.items():
        Qwen2Config(max_position_embeddings=4096, **shape).save_pretrained(root / name)
    return root


def gpu_plan(write_recipe, root, shape, batch, checkpointing, liger, precompute, adapter, name="m.yaml"):
    from dpo_cli.train.device import assumed_gpu, plan_device
    from dpo_cli.train.memory import estimate_memory

    text = (f"stage: dpo\nmodel: {{name_or_path: {root / shape}, dtype: bfloat16}}\n"
            f"data: {{train: pairs.jsonl}}\nref_model: {{precompute: {str(precompute).lower()}}}\n"
            f"trainer: {{per_device_train_batch_size: {batch}, max_length: 1024, "
            f"gradient_checkpointing: {str(checkpointing).lower()}, use_liger_kernel: {str(liger).lower()}}}\n")
    if adapter:
        text += "lora: {r: 16}\n"
    if adapter and adapter.startswith("qlora"):
        text += f"quantization: {{bits: 4, upcast: {str(adapter == 'qlora-upcast').lower()}}}\n"
    recipe = load_recipe(write_recipe(text, name))
    return estimate_memory(recipe, plan_device(recipe.trainer, assumed_gpu(80 << 30)))


# the 7B shapes build a 7B model on the meta device twice per plan (LoRA targets, then the plan): 2-3 s each
@pytest.mark.parametrize("row", [pytest.param(row, id=row[0], marks=[pytest.mark.slow] if row[1] == "q7b" else [])
                                 for row in MEASURED])
def test_plan_is_within_20_percent_of_every_peak_measured_on_an_h100(qwen_shapes, write_recipe, trl_1_16_lm_head,
                                                                      row):
    label, shape, batch, checkpointing, liger, precompute, adapter, measured_gib = row
    plan = gpu_plan(write_recipe, qwen_shapes, shape, batch, checkpointing, liger, precompute, adapter)
    error = plan.total / (measured_gib * 2**30) - 1
    assert abs(error) <= 0.20, f"{label}: plan {plan.total / 2**30:.2f} GiB against {measured_gib} GiB measured"


@pytest.mark.parametrize("shape,batch,checkpointing", [("q05", 8, False),
                                                     pytest.param("q7b", 2, True, marks=pytest.mark.slow)])
def test_qlora_plans_below_lora_now_that_unquantized_weights_stay_in_bf16(qwen_shapes, write_recipe, trl_1_16_lm_head,
                                                                           shape, batch, checkpointing):
    lora = gpu_plan(write_recipe, qwen_shapes, shape, batch, checkpointing, False, False, "lora", "l.yaml")
    qlora = gpu_plan(write_recipe, qwen_shapes, shape, batch, checkpointing, False, False, "qlora", "q.yaml")
    upcast = gpu_plan(write_recipe, qwen_shapes, shape, batch, checkpointing, False, False, "qlora-upcast", "u.yaml")
    assert qlora.total < lora.total
    assert qlora.total < upcast.total  # what the float32 cast cost


def test_dry_run_json_plans_for_a_gpu_of_the_given_size_from_this_machine(qwen_shapes, capsys, tmp_path):
    import json

    from conftest import REPO
    from helpers import run_cli

    code, out, _ = run_cli(capsys, "train", str(REPO / "recipes" / "qwen2.5-0.5b" / "dpo.yaml"),
                           f"model.name_or_path={qwen_shapes / 'q05'}", f"output_dir={tmp_path / 'o'}",
                           "data.train=builtin:demo/train.jsonl", "--dry-run",
                           "--json", "--gpu-memory", "24GiB")
    assert code == 0
    plan = json.loads(out)
    assert plan["device"]["device"] == "cuda" and plan["device"]["precision"] == "bf16"
    assert plan["device"]["memory"] == 24 << 30 and plan["config_fields"]["bf16"] is True
    assert "use_cpu" not in plan["config_fields"]
    memory = plan["memory"]
    assert isinstance(memory["total_bytes"], int) and memory["total_bytes"] == sum(i["bytes"] for i in memory["items"])
    assert memory["device_bytes"] == 24 << 30 and memory["fits"] is True
    defaults = {d["key"]: d for d in plan["defaults"]}
    # one epoch: every row is seen, so the reference is precomputed (and the plan counts no reference forward)
    assert defaults["ref_model.precompute"]["value"] is True and "every training row" in defaults[
        "ref_model.precompute"]["reason"]
    assert plan["config_fields"]["precompute_ref_log_probs"] is True
    assert next(i for i in memory["items"] if i["what"].startswith("reference forward"))["bytes"] == 0
    assert not tmp_path.joinpath("o").exists()


@pytest.mark.parametrize("args,message", [
    (["--dry-run", "--gpu-memory", "lots"], "--gpu-memory 'lots' is not a size"),
    (["--gpu-memory", "24GiB"], "use them with --dry-run"),
])
def test_bad_gpu_memory_is_one_line_exit_2(tiny_model, capsys, write_recipe, args, message):
    from helpers import run_cli

    code, _, err = run_cli(capsys, "train", str(write_recipe(BASE)), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


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
