"""merge-lora: merge a trained adapter into full-precision base weights, check logits, refuse runs with no adapter."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from dpo_cli.core.errors import InputError
from dpo_cli.train.recipe_load import load_recipe

pytestmark = pytest.mark.slow  # every test here trains a model (make test-fast skips them)


@pytest.fixture(scope="module")
def qlora_run(tiny_model, tmp_path_factory):
    """A two-step QLoRA run: the adapter was trained over 4-bit weights, the merge must not be."""
    from dpo_cli.core.builtins import asset_path
    from dpo_cli.runner import run

    tmp = tmp_path_factory.mktemp("merge")
    data = tmp / "pairs.jsonl"
    data.write_text("\n".join(asset_path("demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:8]) + "\n",
                    encoding="utf-8")
    recipe_file = tmp / "recipe.yaml"
    recipe_file.write_text(f"""\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
quantization: {{bits: 4}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
data: {{train: {data}}}
trainer: {{max_steps: 2, per_device_train_batch_size: 4, learning_rate: 0.05, max_length: 64,
          gradient_checkpointing: false, save_strategy: "no"}}
output_dir: {tmp / 'run'}
""", encoding="utf-8")
    return run.train(load_recipe(recipe_file)).output_dir


def test_merge_writes_full_precision_model_matching_adapter(qlora_run, tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_cli.train.merge import merge_lora

    result = merge_lora(qlora_run, tmp_path / "merged")
    out = result.output
    assert result.dtype == "float32" and result.prompts == 4 and result.tokens > 20
    assert result.max_abs_diff < 1e-4 and result.within_tolerance
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    weights = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # never 4-bit
    base = load_file(tiny_model / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert weights[key].shape == base[key].shape and not torch.equal(weights[key], base[key])  # the adapter is in
    merged = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and merged.config.model_type == "llama"


def test_merge_cli_prints_max_difference(qlora_run, tmp_path):
    from dpo_cli.cli import app

    result = CliRunner().invoke(app, ["merge-lora", str(qlora_run), "--output", str(tmp_path / "m"),
                                      "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "max |logit difference|" in result.output and "bfloat16" in result.output


def test_merge_refuses_run_without_adapter(tiny_model, tmp_path):
    from dpo_cli.train.merge import merge_lora

    full = tmp_path / "full-run"
    shutil.copytree(tiny_model, full)  # what a full fine-tuning run leaves: a complete model
    with pytest.raises(InputError, match="no LoRA adapter"):
        merge_lora(full, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_refuses_quantized_dtype_and_nonempty_output(qlora_run, tmp_path):
    from dpo_cli.train.merge import merge_lora

    with pytest.raises(InputError, match="never a quantized type"):
        merge_lora(qlora_run, tmp_path / "out", dtype="int4")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        merge_lora(qlora_run, busy)
    assert (busy / "keep.txt").read_text() == "x"


def _files(root):
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_merge_never_writes_over_or_around_its_run(qlora_run, tmp_path):
    """--overwrite cannot make merge-lora replace its own run, nor a folder holding it, nor a folder it did not make."""
    from dpo_cli.train.merge import merge_lora

    parent = tmp_path / "parent"
    shutil.copytree(qlora_run, parent / "run")
    (parent / "other.txt").write_text("keep")
    before = _files(parent)
    for output, says in ((parent, "contains the input"), (parent / "run", "is the input"),
                         (parent / "run" / "merged", "lies inside the input")):
        with pytest.raises(InputError, match=says):
            merge_lora(parent / "run", output, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        merge_lora(parent / "run", tmp_path / "file", overwrite=True)
    assert _files(parent) == before
    merged = tmp_path / "merged"
    merge_lora(parent / "run", merged)
    merge_lora(parent / "run", merged, overwrite=True)  # its own earlier output: replaced
    assert (merged / "dpo-cli-merge.json").is_file()


@pytest.mark.parametrize("damage, says", [
    (lambda run: (run / "adapter_config.json").write_text("{broken"), "adapter_config.json: not valid JSON"),
    (lambda run: (run / "adapter_model.safetensors").write_bytes(b"\x00" * 64), "cannot be loaded"),
])
def test_a_damaged_adapter_is_one_clear_error(qlora_run, tmp_path, damage, says):
    from dpo_cli.train.merge import merge_lora

    run = tmp_path / "run"
    shutil.copytree(qlora_run, run)
    damage(run)
    with pytest.raises(InputError, match=says):
        merge_lora(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
