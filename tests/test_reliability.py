"""Checkpoints that are complete or absent, exact resume after SIGTERM, a full disk, and secrets kept out of runs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dpo_cli.runner.run import train
from dpo_cli.train import checkpoints
from dpo_cli.train.recipe_load import load_recipe

pytestmark = pytest.mark.slow  # every test here trains a model (make test-fast skips them)

RECIPE = """\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: builtin:demo/train.jsonl}}
trainer:
  max_steps: {steps}
  save_steps: {save_steps}
  logging_steps: 1
  per_device_train_batch_size: 2
  learning_rate: 1.0e-3
  max_length: 48
  gradient_checkpointing: false
output_dir: {out}
"""


def _losses(out):
    lines = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [(m["step"], m["loss"]) for m in lines if m["split"] == "train"]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny_model):
    """A real run with complete checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("ckpt")
    recipe = root / "r.yaml"
    recipe.write_text(RECIPE.format(steps=4, save_steps=2, out=root / "run"))
    train(load_recipe(recipe))
    return root / "run"


def test_checkpoints_are_marked_complete_and_carry_no_pickle(two_checkpoints):
    for step in (2, 4):
        folder = two_checkpoints / f"checkpoint-{step}"
        assert checkpoints.problem(folder) is None
        assert json.loads((folder / checkpoints.MARKER).read_text())["step"] == step
        assert not (folder / "training_args.bin").exists() and (folder / "training_args.json").exists()
    assert not (two_checkpoints / "training_args.bin").exists()
    assert sorted(p.name for p in two_checkpoints.iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-4", "plots"]


def _truncate_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


@pytest.mark.parametrize("corrupt, reason", [
    (lambda f: (f / checkpoints.MARKER).unlink(), "no completion marker"),
    (_truncate_weights, "model.safetensors is truncated"),
    (lambda f: (f / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    (lambda f: (f / "trainer_state.json").write_text("{not json"), "trainer_state.json is corrupt"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00"), "model.safetensors is truncated"),
    (lambda f: (f / "optimizer.pt").write_bytes((f / "optimizer.pt").read_bytes()[:-10]), "optimizer.pt is truncated"),
    (lambda f: (f / checkpoints.MARKER).write_text(""), f"its completion marker {checkpoints.MARKER} is empty"),
    (lambda f: (f / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    (lambda f: (f / "rng_state.pth").write_bytes(bytes(len((f / "rng_state.pth").read_bytes()))),
     "rng_state.pth has changed since it was saved"),
])
def test_auto_resume_skips_a_broken_newest_checkpoint(two_checkpoints, tmp_path, corrupt, reason):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    corrupt(run / "checkpoint-4")
    warnings = []
    assert checkpoints.resolve_resume(run, "auto", warnings.append) == run / "checkpoint-2"
    assert len(warnings) == 1 and warnings[0].startswith(f"skipping {run / 'checkpoint-4'}: {reason}")


def test_resume_refuses_a_changed_recipe_with_a_diff(two_checkpoints, tmp_path):
    from dpo_cli.core.errors import InputError

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(steps=6, save_steps=2, out=run))
    with pytest.raises(InputError, match=r"pass --resume-force.*recipe\.trainer\.max_steps: 4 -> 6"):
        train(load_recipe(recipe, ["trainer.beta=0.1"]), resume="auto")


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    # what torch.save raises on a full disk: not an OSError
    (RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"),
     "PytorchStreamWriter failed writing file data/3: file write failed"),
])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_model, tmp_path, monkeypatch, error, reason):
    from transformers import AutoModelForCausalLM, Trainer

    original = Trainer._save_optimizer_and_scheduler

    def fail_on_second(self, output_dir):
        if self.state.global_step == 4:
            raise error
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", fail_on_second)
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(steps=6, save_steps=2, out=out))
    with pytest.raises(checkpoints.SaveFailedError) as info:
        train(load_recipe(recipe))
    assert str(info.value) == (f"saving checkpoint-4 failed ({reason}); "
                               f"the previous checkpoint {out / 'checkpoint-2'} is intact")
    assert [p.name for p in out.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-2"]  # nothing partial
    assert checkpoints.problem(out / "checkpoint-2") is None
    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["checkpoint"] == str(out / "checkpoint-2")
    assert manifest["error"] == str(info.value)


def test_resume_auto_without_a_checkpoint_starts_from_the_beginning(tiny_model, tmp_path, capsys):
    """A requeue script runs the same command every time: its first attempt, and one stopped before any checkpoint."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"status": "interrupted"}')  # an attempt killed before its first checkpoint
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=2, save_steps=2, out=out))
    result = train(load_recipe(tmp_path / "r.yaml"), resume="auto")
    assert result.manifest["status"] == "completed" and result.manifest["global_step"] == 2
    assert "resumed_from" not in result.manifest
    err = capsys.readouterr().err
    assert "--resume auto: no complete checkpoint" in err and "starts from the beginning" in err
    assert "(interrupted) is written over" in err


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "dpo_cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_then_resume_matches_an_uninterrupted_run(tiny_model, tmp_path):
    steps = 150
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    (tmp_path / "whole.yaml").write_text(RECIPE.format(steps=steps, save_steps=5, out=whole))
    (tmp_path / "cut.yaml").write_text(RECIPE.format(steps=steps, save_steps=5, out=cut))

    interrupted = _cli(str(tmp_path / "cut.yaml"))
    deadline = time.time() + 300
    while not (cut / "checkpoint-5" / checkpoints.MARKER).exists():
        assert interrupted.poll() is None and time.time() < deadline, "no first checkpoint"
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGTERM)
    _, err = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM after step" in err and "--resume auto" in err
    stopped_at = checkpoints.newest_complete(cut)[0]
    assert stopped_at is not None and int(stopped_at.name.split("-")[1]) < steps

    resumed = _cli(str(tmp_path / "cut.yaml"), "--resume", "auto")
    uninterrupted = _cli(str(tmp_path / "whole.yaml"))
    for process in (resumed, uninterrupted):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]

    assert _losses(cut) == _losses(whole)
    assert [s for s, _ in _losses(cut)] == list(range(1, steps + 1))
    a, b = _weights(cut), _weights(whole)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert json.loads((cut / "run.json").read_text())["resumed_from"] == str(stopped_at)


def test_secrets_never_reach_the_run_directory_or_the_output(tiny_model, tmp_path):
    sentinel = "sentinel-5ecret-9f3a"
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(steps=2, save_steps=1, out=out)
                      + f"env: {{api_key: {sentinel}-recipe, WANDB_MODE: offline}}\n")
    env = {**os.environ, "HF_TOKEN": f"{sentinel}-hf", "WANDB_API_KEY": f"{sentinel}-wandb"}
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "train", str(recipe), "trainer.hub_token=" + sentinel],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sentinel not in done.stdout + done.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in files) and any(p.parent.name == "checkpoint-1" for p in files)
    leaking = [str(p) for p in files if sentinel.encode() in p.read_bytes()]
    assert leaking == []
    assert "<redacted>" in (out / "recipe.resolved.yaml").read_text()


def test_sigterm_after_the_last_step_saves_the_final_model_and_says_so(tiny_model, tmp_path):
    """A signal during the held-out scoring that follows training: the model is saved, run.json says interrupted."""
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(steps=2, save_steps=100, out=out)
                      .replace("train: builtin:demo/train.jsonl}", "train: builtin:demo/train.jsonl, "
                                                                   "eval: builtin:demo/eval.jsonl}")
                      .replace("  logging_steps: 1\n", "  logging_steps: 1\n  per_device_eval_batch_size: 1\n"))
    process = _cli(str(recipe))
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() or '"step": 2' not in (out / "metrics.jsonl").read_text():
        assert process.poll() is None and time.time() < deadline, "training did not reach its last step"
        time.sleep(0.02)
    time.sleep(0.5)  # into the held-out scoring of 80 pairs, one at a time
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert f"stopped by SIGTERM after training; the final model is saved in {out}" in err
    assert (out / "model.safetensors").is_file()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and "after training" in manifest["error"]


def test_sigterm_while_models_load_leaves_run_json_interrupted(tiny_model, tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(steps=2, save_steps=100, out=out))
    process = _cli(str(recipe))
    deadline = time.time() + 300
    while not (out / "run.json").is_file():  # written once the data is read, before any weights load
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["error"].startswith("stopped by SIGTERM")
    assert not (out / ".dpo-cli.lock").exists()
