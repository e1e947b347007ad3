"""On a CUDA GPU: a bf16 DPO run, QLoRA, the fast defaults, and the memory plan against the measured peak.

Skipped where there is no CUDA (tests/conftest.py); `make test-gpu` runs them alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from dpo_cli.train.recipe_load import load_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

RECIPE = """\
stage: dpo
model: {{name_or_path: {model}}}
data: {{train: {data}}}
{extra}
trainer:
  max_steps: {steps}
  logging_steps: 1
  learning_rate: 1.0e-3
  per_device_train_batch_size: 4
  max_length: {max_length}
  gradient_checkpointing: false
  save_strategy: "no"
{trainer}
output_dir: {out}
"""


def pairs(tmp_path, rows=16, repeat=1):
    """The first demo pairs; ``repeat`` lengthens every answer so each sequence reaches max_length."""
    from dpo_cli.core.builtins import asset_path

    lines = asset_path("demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    out = []
    for line in lines:
        row = json.loads(line)
        for side in ("chosen", "rejected"):
            row[side] = [{**m, "content": " ".join([m["content"]] * repeat)} for m in row[side]]
        out.append(json.dumps(row, ensure_ascii=False))
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def recipe_file(write_recipe, tmp_path, *, model="builtin:tiny-chat", steps=4, extra="", trainer="", rows=16,
                max_length=64, repeat=1, name="r.yaml"):
    return write_recipe(RECIPE.format(model=model, data=pairs(tmp_path, rows, repeat), extra=extra, steps=steps,
                                      trainer=trainer, max_length=max_length, out=tmp_path / name.split(".")[0]),
                        name)


def test_bf16_dpo_run_on_cuda_trains_and_reports_throughput(tiny_model, write_recipe, tmp_path):
    from dpo_cli.runner.run import train

    result = train(load_recipe(recipe_file(write_recipe, tmp_path)))
    manifest = result.manifest
    assert manifest["device"]["device"] == "cuda" and manifest["device"]["precision"] in ("bf16", "fp16")
    metrics = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m["split"] == "train"]
    assert len(losses) == 4 and all(isinstance(x, float) for x in losses)
    assert all(m["tokens_per_second"] > 0 for m in metrics if m["split"] == "train")
    throughput = manifest["throughput"]
    assert throughput["tokens_per_second"] > 0 and throughput["device"] != "CPU"
    assert (throughput["mfu"] is None) == (throughput["peak_bf16_flops"] is None)


def test_qlora_trains_on_cuda_with_4bit_layers_on_the_gpu(tiny_model, write_recipe, tmp_path):
    import torch

    from dpo_cli.runner.run import train
    from helpers import build_trainer

    recipe = load_recipe(recipe_file(write_recipe, tmp_path, extra="lora: {r: 4}\nquantization: {bits: 4}"),
                         ["model.dtype=bfloat16"])
    trainer = build_trainer(recipe)
    q_proj = trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.device.type == "cuda"
    assert trainer.model.get_input_embeddings().weight.dtype == torch.bfloat16  # not cast to float32
    del trainer
    result = train(recipe)
    assert result.manifest["status"] == "completed"
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_fast_defaults_are_on_for_a_run_over_the_whole_data(tiny_model, write_recipe, tmp_path):
    from dpo_cli.runner.run import train
    from dpo_cli.train.trl_compat import dpo_liger_is_fused_loss
    from helpers import build_trainer

    path = recipe_file(write_recipe, tmp_path, steps=4, rows=16)  # 4 steps x 4 rows: every row once
    result = train(load_recipe(path))
    defaults = result.manifest["defaults"]
    assert defaults["ref_model.precompute"]["value"] is True
    assert result.manifest["reference"].startswith("precomputed")
    liger = importlib.util.find_spec("liger_kernel") is not None and not dpo_liger_is_fused_loss()
    assert defaults["trainer.use_liger_kernel"]["value"] is liger, defaults["trainer.use_liger_kernel"]["reason"]
    # and the explicit keys win
    trainer = build_trainer(load_recipe(path, ["ref_model.precompute=false", "trainer.use_liger_kernel=false"]))
    assert not trainer.args.precompute_ref_log_probs and not trainer.args.use_liger_kernel


PEAK_SCRIPT = """
import json, sys, torch
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.runner.run import train
torch.cuda.reset_peak_memory_stats()
train(load_recipe(sys.argv[1]))
print(json.dumps({"peak": torch.cuda.max_memory_allocated()}))
"""


def test_memory_plan_is_within_20_percent_of_the_measured_peak(tiny_model, write_recipe, tmp_path):
    """A 150M-parameter Llama in bf16, every sequence cut at max_length: the plan against the process's peak."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dpo_cli.train.device import plan_device
    from dpo_cli.train.memory import estimate_memory

    model_dir = tmp_path / "llama"
    config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(model_dir)
    path = recipe_file(write_recipe, tmp_path, model=model_dir, steps=3, max_length=512, repeat=40,
                       extra="ref_model: {precompute: false}", trainer="  use_liger_kernel: false")
    recipe = load_recipe(path)
    plan = estimate_memory(recipe, plan_device(recipe.trainer))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak"]
    assert abs(plan.total / peak - 1) <= 0.20, f"plan {plan.total / 2**30:.2f} GiB, peak {peak / 2**30:.2f} GiB"
