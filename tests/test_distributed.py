"""Several processes on CPU: torchrun with two ranks matches one process with the same global batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from dpo_cli.recipe.load import load_recipe
from dpo_cli.train.launch import SHIPPED_CONFIGS, accelerate_config_path, config_warnings, load_accelerate_config

RECIPE = """\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: builtin:demo/train.jsonl}}
trainer:
  max_steps: 4
  logging_steps: 1
  per_device_train_batch_size: {batch}
  learning_rate: 1.0e-3
  max_length: 64
  gradient_checkpointing: false
  save_strategy: "no"
output_dir: {out}
"""


def _losses(out):
    return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if m["split"] == "train"]


SFT_MIX_REASON = ("TRL's sft loss type is a token mean per micro-batch and process, not over the global batch: a loss "
                  "mixing it gives other weights at 2 processes than at 1 (docs/stages.md, DPO losses)")


@pytest.mark.slow
@pytest.mark.parametrize("loss", [
    [],  # sigmoid: a mean over pairs
    pytest.param(["trainer.loss_type=[sigmoid, sft]", "trainer.loss_weights=[1.0, 1.0]"], id="sigmoid+sft"),
])
def test_two_torchrun_ranks_match_one_process_with_the_same_global_batch(tiny_model, write_recipe, tmp_path, loss):
    # gloo on CPU: processes sharing one GPU in bf16 do not match one process (MEASUREMENTS.md), so pin the CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "dpo_cli", "train",
                             str(write_recipe(RECIPE.format(batch=4, out=one), "one.yaml")), *loss],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run([sys.executable, "-m", "dpo_cli", "train",
                             str(write_recipe(RECIPE.format(batch=2, out=two), "two.yaml")), "--nproc", "2", *loss],
                            capture_output=True, text=True, env=env, timeout=600)
    assert double.returncode == 0, double.stderr[-2000:]
    assert "torch.distributed.run --nproc_per_node 2" in double.stderr or "torchrun" in double.stderr

    expected, got = _losses(one), _losses(two)
    assert len(expected) == len(got) == 4  # one metrics line per step: only rank 0 wrote
    if loss:  # the documented exception: if this starts to match, TRL changed its sft term and the docs must too
        assert any(abs(a - b) > 1e-4 * abs(a) for a, b in zip(expected, got)), (SFT_MIX_REASON, expected, got)
        return
    for a, b in zip(expected, got):
        assert abs(a - b) <= 1e-4 * abs(a), (expected, got)

    assert double.stdout.count("done:") == 1
    manifest = json.loads((two / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["device"]["processes"] == 2
    assert not [p.name for p in two.iterdir() if p.name.startswith(".")]  # no temporary files left behind


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_accelerate_config_loads(name):
    path = accelerate_config_path(name)
    assert path == (REPO / "recipes" / "accelerate" / f"{name}.yaml").resolve() or path.read_text() == \
        (REPO / "recipes" / "accelerate" / f"{name}.yaml").read_text()
    config = load_accelerate_config(path)
    assert config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    assert path.read_text().splitlines()[0].startswith(f"# dpo-cli train recipe.yaml --nproc 8 --accelerate-config {name}")


def test_zero3_with_a_separate_reference_warns(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(RECIPE.format(batch=2, out=tmp_path)))
    warnings = config_warnings(load_accelerate_config(accelerate_config_path("zero3")), recipe, "cuda")
    assert any("ZeRO-3 with full fine-tuning" in w for w in warnings)
    assert not config_warnings(load_accelerate_config(accelerate_config_path("ddp")), recipe, "cuda")


@pytest.mark.parametrize("override", ["ref_model.precompute=true", "trainer.precompute_ref_log_probs=true",
                                      "lora={r: 8}", "ref_model.name_or_path=builtin:tiny-chat"])
def test_zero3_warning_only_where_the_reference_is_a_frozen_copy(write_recipe, tmp_path, override):
    """A precomputed reference has no weights to shard, LoRA's is the policy itself, and a separate reference model is
    no choice LoRA would change: "prefer LoRA" was said for all of them."""
    recipe = load_recipe(write_recipe(RECIPE.format(batch=2, out=tmp_path)), [override])
    zero3 = load_accelerate_config(accelerate_config_path("zero3"))
    assert not [w for w in config_warnings(zero3, recipe, "cuda") if "ZeRO-3" in w]


def test_unknown_accelerate_config_is_an_input_error(capsys, write_recipe, tmp_path):
    from helpers import run_cli

    code, _, err = run_cli(capsys, "train", str(write_recipe(RECIPE.format(batch=2, out=tmp_path / "o"))),
                           "--accelerate-config", "zero4", "--dry-run")
    assert code == 2 and "accelerate config 'zero4' is neither a file nor a shipped config" in err


def test_dry_run_prints_the_launch_command(capsys, write_recipe, tmp_path, cpu_only):
    from helpers import run_cli

    code, out, _ = run_cli(capsys, "train", str(write_recipe(RECIPE.format(batch=2, out=tmp_path / "o"))),
                           "trainer.beta=0.2", "--nproc", "2", "--dry-run")
    assert code == 0 and "--nproc_per_node 2 -m dpo_cli train" in out and "trainer.beta=0.2" in out


@pytest.mark.slow
def test_a_rank_other_than_0_can_build_the_tiny_model(tmp_path):
    """Under torchrun, transformers' save_pretrained writes on rank 0 only; here rank 1 builds first, rank 0 after."""
    script = tmp_path / "build.py"
    script.write_text("import torch.distributed as dist\n"
                      "from transformers import AutoModelForCausalLM\n"
                      "from dpo_cli.core.builtins import ensure_tiny_chat\n"
                      "dist.init_process_group('gloo')\n"
                      "if dist.get_rank() == 1:\n"
                      "    AutoModelForCausalLM.from_pretrained(ensure_tiny_chat())\n"
                      "dist.barrier()\n"
                      "AutoModelForCausalLM.from_pretrained(ensure_tiny_chat())\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPO_CLI_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    models = tmp_path / "home" / "models"
    assert [p.name for p in models.iterdir()] == ["tiny-chat-v1"]  # one build kept, no temporary folder left
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (models / "tiny-chat-v1").iterdir()}


@pytest.mark.slow
def test_pairs_under_two_torchrun_ranks_shares_the_prompts_and_writes_once(tiny_model, tmp_path):
    from dpo_cli.data.load import load_training_data

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "pairs"
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "train", str(REPO / "recipes" / "tiny" / "pairs.yaml"),
                           f"output_dir={out}", "data.train={path: builtin:demo/train.jsonl, limit: 5}",
                           "sampling.max_new_tokens=8", "--nproc", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["device"]["processes"] == 2
    assert manifest["pairs"]["prompts"] == 5 and manifest["pairs"]["samples"] == 20
    prompts, _ = load_training_data({"path": "builtin:demo/train.jsonl", "limit": 5}, "prompt")
    written = [json.loads(line)["prompt"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert written == prompts["prompt"]  # both ranks' shares, back in the data's order
    assert done.stdout.count("done:") == 1 and done.stderr.count("pairs: ") == 1  # the main process reports
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def _cpu_env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_two_process_precompute_with_an_empty_cache_succeeds(tiny_model, write_recipe, tmp_path, cache):
    """TRL hands its precomputed log-probs to the other ranks through a datasets file in the main process's own
    temporary directory: rank 1 used to fail with FileNotFoundError on it."""
    out, store = tmp_path / "out", tmp_path / "cache"
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "train",
                           str(write_recipe(RECIPE.format(batch=2, out=out))), "--nproc", "2",
                           "ref_model.precompute=true", f"ref_model.cache={str(cache).lower()}",
                           f"ref_model.cache_dir={store}", "trainer.max_steps=2"],
                          capture_output=True, text=True, env=_cpu_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["device"]["processes"] == 2
    assert manifest["defaults"]["ref_model.precompute"]["value"] is True
    assert len(list(store.glob("*.safetensors"))) == (1 if cache else 0)  # written once, by the main process
    if cache:
        assert [e["event"] for e in manifest["ref_logp_cache"]] == ["miss"]


def _two_nodes(workdirs, homes, recipe, *overrides, timeout=300):
    """Two single-process torchrun "nodes" on 127.0.0.1, each in its own working directory with its own home."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "dpo_cli", "train", str(recipe), *overrides],
                              cwd=workdirs[rank], env=_cpu_env(DPO_CLI_HOME=str(homes[rank])),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for rank in (0, 1)]
    results = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=timeout)
            results.append((node.returncode, stdout, stderr))
    finally:
        for node in nodes:  # a hung node: torchrun and its workers, which killing torchrun alone leaves running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("precompute", ["auto", "true"])
def test_two_nodes_with_different_caches_agree_on_one_reference_plan(tiny_model, write_recipe, tmp_path, precompute):
    """Node 0 holds the reference log-probs in its cache, node 1 does not. Each used to decide alone: under auto node 0
    precomputed and node 1 ran a live reference, silently; with precompute: true node 1 ran the reference pass
    while node 0 loaded its cache, and the job hung. The main process decides and hands node 1 the log-probs."""
    homes = [tmp_path / "home0", tmp_path / "home1"]
    workdirs = [tmp_path / "node0", tmp_path / "node1"]
    for folder in workdirs:
        folder.mkdir()
    out = tmp_path / "shared" / "run"  # output_dir on storage both nodes see
    recipe = write_recipe(RECIPE.format(batch=2, out=out))
    # node 0's cache filled by a one-process run with the same reference, tokenizer, data and truncation
    filled = subprocess.run([sys.executable, "-m", "dpo_cli", "train", str(recipe), "ref_model.precompute=true",
                             "trainer.max_steps=1", f"output_dir={tmp_path / 'fill'}"],
                            capture_output=True, text=True, env=_cpu_env(DPO_CLI_HOME=str(homes[0])), timeout=600)
    assert filled.returncode == 0, filled.stderr[-2000:]
    assert not (homes[1] / "ref-logps").exists()

    results = _two_nodes(workdirs, homes, recipe, f"ref_model.precompute={precompute}", "trainer.max_steps=2")
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["device"]["processes"] == 2
    assert manifest["defaults"]["ref_model.precompute"]["value"] is True
    assert [e["event"] for e in manifest["ref_logp_cache"]] == ["hit"]
    assert not (homes[1] / "ref-logps").exists()  # node 1 neither computed nor stored log-probs of its own
    assert "loaded from cache" in results[0][2] and "loaded from cache" not in results[1][2]


@pytest.mark.slow
def test_two_nodes_need_one_output_dir_they_both_see(tiny_model, write_recipe, tmp_path):
    """A relative output_dir is a folder of its own on each node: node 1 used to write its RNG state into its own
    checkpoints while node 0 marked checkpoints without it complete. Now every rank stops at the start, one message."""
    workdirs = [tmp_path / "node0", tmp_path / "node1"]
    for folder in workdirs:
        folder.mkdir()
    recipe = write_recipe(RECIPE.format(batch=2, out="run"))
    results = _two_nodes(workdirs, [tmp_path / "home0", tmp_path / "home1"], recipe, "trainer.save_strategy=steps",
                         "trainer.save_steps=1", "trainer.max_steps=1")
    message = "is not the same folder on every machine: rank 1"
    for code, _, stderr in results:
        assert code != 0 and message in stderr, stderr[-3000:]
    assert "must be on storage every node shares" in results[0][2]
    assert not (workdirs[0] / "run" / "checkpoint-1").exists() and not (workdirs[1] / "run" / "checkpoint-1").exists()
    assert not [p for p in (workdirs[0] / "run").iterdir() if p.name.startswith(".dpo-cli-shared")]


@pytest.mark.slow
def test_checkpoint_marker_lists_every_ranks_files(tiny_model, write_recipe, tmp_path):
    from dpo_cli.train.checkpoints import MARKER

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "train", str(write_recipe(RECIPE.format(batch=2, out=out))),
                           "--nproc", "2", "trainer.max_steps=2", "trainer.save_strategy=steps", "trainer.save_steps=1"],
                          capture_output=True, text=True, env=_cpu_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in (1, 2):
        files = json.loads((out / f"checkpoint-{step}" / MARKER).read_text())["files"]
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(files), sorted(files)


def test_a_checkpoint_without_another_ranks_files_is_not_marked_complete(tmp_path):
    """What the main process sees when rank 1 wrote its RNG state into a folder of its own."""
    from types import SimpleNamespace

    from dpo_cli.train.callbacks import CompleteCheckpoints
    from dpo_cli.train.checkpoints import MARKER, SaveFailedError

    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "rng_state_0.pth").write_bytes(b"rng")
    args = SimpleNamespace(output_dir=str(tmp_path), world_size=2, should_save=True, save_only_model=False,
                           save_total_limit=None, to_json_string=lambda: "{}")
    callback = CompleteCheckpoints(args, {})
    state = SimpleNamespace(global_step=3, best_model_checkpoint=None)
    with pytest.raises(SaveFailedError, match="lacks rng_state_1.pth that the other ranks wrote"):
        callback.on_save(args, state, None)
    assert not (folder / MARKER).exists()
    (folder / "rng_state_1.pth").write_bytes(b"rng")
    callback.on_save(args, state, None)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(json.loads((folder / MARKER).read_text())["files"])
