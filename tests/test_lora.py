"""lora:, quantization: and ref_model: sections: parsing, conflict rules, reference strategies, a QLoRA run on CPU."""

from __future__ import annotations

import json

import pytest

from dpo_cli.core.errors import RecipeError
from dpo_cli.train.recipe_load import load_recipe

BASE = """\
stage: dpo
model:
  name_or_path: builtin:tiny-chat
data:
  train: builtin:demo/train.jsonl
"""


def small_data(tmp_path, rows: int = 16):
    """The first demo pairs in a file of their own, so smoke runs tokenize little."""
    from dpo_cli.core.builtins import asset_path

    lines = asset_path("demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sections_parse_with_defaults(tiny_model, write_recipe):
    recipe = load_recipe(write_recipe(BASE + "lora: {}\nquantization:\n  bits: 4\nref_model: auto\n"))
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.target_modules) == (16, 32, "all-linear")
    assert (recipe.quantization.quant_type, recipe.quantization.double_quant) == ("nf4", True)
    assert not recipe.ref_model.explicit and recipe.ref_model.precompute == "auto"
    assert recipe.quantization.upcast is False  # unquantized weights stay in the model's dtype


def test_lora_fields_map_onto_peft(tiny_model, write_recipe):
    from dpo_cli.train.models import lora_config

    recipe = load_recipe(write_recipe(BASE + "lora:\n  r: 4\n  alpha: 8\n  dropout: 0.1\n  target_modules: [q_proj, v_proj]"
                                             "\n  use_rslora: true\n  modules_to_save: [lm_head]\n"))
    config = lora_config(recipe.lora)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora, config.use_dora) == (4, 8, 0.1, True,
                                                                                                    False)
    assert set(config.target_modules) == {"q_proj", "v_proj"} and config.modules_to_save == ["lm_head"]
    assert config.task_type == "CAUSAL_LM"


def test_unknown_lora_key_names_line_and_suggests(tiny_model, write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(BASE + "lora:\n  alpah: 8\n"))
    assert err.value.line == 7 and err.value.field == "lora.alpah" and "did you mean 'alpha'" in str(err.value)


def test_conflict_quantization_without_lora(tiny_model, write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(BASE + "quantization:\n  bits: 4\n"))
    assert err.value.line == 6 and err.value.field == "quantization" and "add a lora: section" in str(err.value)


def test_conflict_ref_adapter_without_base(tiny_model, write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(BASE + "ref_model:\n  adapter: runs/sft\n"))
    assert err.value.line == 7 and err.value.field == "ref_model.adapter" and "name_or_path" in str(err.value)


@pytest.mark.parametrize("precompute", ["ref_model:\n  precompute: true\n", "trainer:\n  precompute_ref_log_probs: true\n"])
def test_conflict_precompute_with_sync_ref_model(tiny_model, write_recipe, precompute):
    text = BASE + precompute + ("trainer:\n  sync_ref_model: true\n" if precompute.startswith("ref") else
                                "  sync_ref_model: true\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(text))
    assert "sync_ref_model" in str(err.value) and err.value.line is not None
    assert err.value.field in ("ref_model.precompute", "trainer.precompute_ref_log_probs")


def test_conflict_lora_targets_match_nothing_lists_modules(tiny_model, write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(BASE + "lora:\n  target_modules: [query, value]\n"))
    message = str(err.value)
    assert err.value.field == "lora.target_modules" and err.value.line == 7
    for existing in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert existing in message


def test_conflict_target_modules_from_override_names_the_override(tiny_model, write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(BASE + "lora: {}\n"), ["lora.target_modules=qkv"])
    assert "lora.target_modules=qkv" in str(err.value)


def test_conflict_sync_ref_model_with_shared_lora_reference(tiny_model, write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(BASE + "lora: {}\ntrainer:\n  sync_ref_model: true\n"))
    assert err.value.field == "trainer.sync_ref_model"


def test_eight_bit_rejects_four_bit_options(tiny_model, write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(BASE + "lora: {}\nquantization:\n  bits: 8\n  quant_type: fp4\n"))
    assert "only applies to bits: 4" in str(err.value)


@pytest.mark.parametrize("extra, kind", [
    ("", "copy"),
    ("lora: {}\n", "shared"),
    ("lora: {}\nref_model:\n  name_or_path: builtin:tiny-chat\n  quantization: {bits: 4}\n", "separate"),
    ("lora: {}\nref_model:\n  precompute: true\n", "precomputed"),
    ("trainer:\n  precompute_ref_log_probs: true\n", "precomputed"),
])
def test_reference_strategy_follows_recipe(tiny_model, write_recipe, extra, kind):
    from dpo_cli.train.stages import get_stage

    recipe = load_recipe(write_recipe(BASE + extra))
    plan = get_stage("dpo").reference(recipe)
    assert plan.kind == kind
    assert plan.weights_in_memory == (kind in ("copy", "separate"))
    if kind == "precomputed":
        from dpo_cli.train.config import build_config
        from dpo_cli.train.device import plan_device

        assert build_config(recipe, plan_device(recipe.trainer)).precompute_ref_log_probs is True


def test_separate_quantized_reference_loads_frozen_4bit(tiny_model, write_recipe):
    from dpo_cli.train.models import load_models
    from dpo_cli.train.stages import get_stage

    recipe = load_recipe(write_recipe(BASE + "lora: {}\nref_model:\n  quantization: {bits: 4}\n"))
    models = load_models(recipe, get_stage("dpo"))
    assert getattr(models.reference, "is_loaded_in_4bit", False)
    assert not any(p.requires_grad for p in models.reference.parameters())
    assert not getattr(models.policy, "is_loaded_in_4bit", False) and models.peft_config.r == 16


@pytest.mark.parametrize("upcast", [False, True])
def test_qlora_casts_unquantized_weights_to_float32_only_when_asked(tiny_model, write_recipe, upcast):
    import torch

    from dpo_cli.train.models import load_models
    from dpo_cli.train.stages import get_stage

    recipe = load_recipe(write_recipe(BASE + f"lora: {{}}\nquantization: {{bits: 4, upcast: {str(upcast).lower()}}}\n"),
                         ["model.dtype=bfloat16"])
    policy = load_models(recipe, get_stage("dpo")).policy
    assert getattr(policy, "is_loaded_in_4bit", False)
    expected = torch.float32 if upcast else torch.bfloat16
    assert policy.get_input_embeddings().weight.dtype == expected
    assert policy.model.norm.weight.dtype == expected
    assert not any(p.requires_grad for p in policy.parameters())  # the adapter, added by TRL, is what trains


@pytest.mark.slow
def test_qlora_trains_on_cpu_with_shared_reference(tiny_model, write_recipe, tmp_path):
    """QLoRA end to end on CPU: 4-bit NF4 base, LoRA adapter learns, base stays 4-bit, no reference copy."""
    import torch
    from safetensors.torch import load_file

    from dpo_cli.runner import run
    from helpers import build_trainer

    data = small_data(tmp_path)
    recipe = load_recipe(write_recipe(f"""\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
quantization: {{bits: 4}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
data: {{train: {data}}}
trainer: {{max_steps: 2, per_device_train_batch_size: 4, learning_rate: 0.01, max_length: 64,
          gradient_checkpointing: false, save_strategy: "no", logging_steps: 1}}
output_dir: {tmp_path / 'out'}
"""))
    # the trainer the run builds: PEFT over 4-bit layers, and no reference model object at all
    trainer = build_trainer(recipe)
    assert trainer.ref_model is None
    assert type(trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    del trainer

    result = run.train(recipe)
    out = result.output_dir
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["reference"].startswith("shared:")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics if m["split"] == "train")
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(float(t.float().abs().max()) > 0 for t in lora_b)  # B starts at zero: it learned
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert not (out / "model.safetensors").exists()  # only the adapter is saved, never 4-bit base weights
    assert torch.isfinite(torch.tensor([m["loss"] for m in metrics if "loss" in m])).all()
