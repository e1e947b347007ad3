"""DPO end to end on the tiny model: a smoke run, and the quickstart recipe with its accuracy target."""

from __future__ import annotations

import json

import pytest

from dpo_cli.runner.run import train
from dpo_cli.train.recipe_load import load_recipe
from helpers import run_cli

pytestmark = pytest.mark.slow  # every test here trains a model (make test-fast skips them)

SMOKE = """\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: builtin:demo/train.jsonl, eval: builtin:demo/eval.jsonl}}
trainer:
  max_steps: 4
  logging_steps: 1
  learning_rate: 1.0e-3
  per_device_train_batch_size: 4
  per_device_eval_batch_size: 16
  max_length: 64
  gradient_checkpointing: false
  save_strategy: "no"
output_dir: {out}
"""


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_dpo_smoke_run_logs_loss_changes_weights_and_saves_a_loadable_model(tiny_model, write_recipe, tmp_path,
                                                                          cpu_only):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    result = train(load_recipe(write_recipe(SMOKE.format(out=out))))

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [m for m in metrics if m["split"] == "train"]
    assert [m["step"] for m in train_logs] == [1, 2, 3, 4]
    assert all(isinstance(m["loss"], float) for m in train_logs)
    assert "rewards/margins" in train_logs[0]

    before, after = _weights(tiny_model), _weights(out)
    changed = [k for k in after if not (after[k] == before[k]).all()]
    assert changed, "training changed no weight"

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    AutoTokenizer.from_pretrained(out)

    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["global_step"] == 4
    assert set(manifest["versions"]) >= {"dpo-cli", "trl", "transformers", "peft", "accelerate", "torch"}
    assert len(manifest["data"]["train"]["fingerprint"]) == 64 and manifest["data"]["eval"]["rows"] == 80
    assert manifest["started_at"] and manifest["finished_at"] and manifest["device"]["device"] == "cpu"
    assert set(manifest["evaluation"]["after"]) >= {"reward_accuracy", "reward_margin", "logprob_accuracy"}
    assert (out / "recipe.resolved.yaml").read_text().startswith("stage: dpo")
    assert result.output_dir == out


def test_refuses_a_non_empty_output_dir_without_overwrite(capsys, tiny_model, write_recipe, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "train", str(write_recipe(SMOKE.format(out=out))))
    assert code == 2 and "is not empty; pass --overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_quickstart_reaches_the_accuracy_target(capsys, tiny_model, tmp_path):
    from conftest import REPO

    out = tmp_path / "quickstart"
    code, stdout, _ = run_cli(capsys, "train", str(REPO / "recipes" / "quickstart.yaml"), f"output_dir={out}")
    assert code == 0
    evaluation = json.loads((out / "run.json").read_text())["evaluation"]
    assert evaluation["after"]["reward_accuracy"] >= 0.9
    assert evaluation["after"]["reward_margin"] > 0
    assert "preference accuracy (implicit reward)" in stdout
