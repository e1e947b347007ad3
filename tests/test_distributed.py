"""Several processes on CPU: torchrun with two ranks matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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


@pytest.mark.slow
def test_two_torchrun_ranks_match_one_process_with_the_same_global_batch(tiny_model, write_recipe, tmp_path):
    # gloo on CPU: processes sharing one GPU in bf16 do not match one process (MEASUREMENTS.md), so pin the CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "dpo_cli", "train",
                             str(write_recipe(RECIPE.format(batch=4, out=one), "one.yaml"))],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run([sys.executable, "-m", "dpo_cli", "train",
                             str(write_recipe(RECIPE.format(batch=2, out=two), "two.yaml")), "--nproc", "2"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert double.returncode == 0, double.stderr[-2000:]
    assert "torch.distributed.run --nproc_per_node 2" in double.stderr or "torchrun" in double.stderr

    expected, got = _losses(one), _losses(two)
    assert len(expected) == len(got) == 4  # one metrics line per step: only rank 0 wrote
    for a, b in zip(expected, got):
        assert abs(a - b) <= 1e-4 * abs(a), (expected, got)

    assert double.stdout.count("done:") == 1
    manifest = json.loads((two / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["device"]["processes"] == 2
    assert manifest["distributed"] == {"type": "MULTI_CPU", "processes": 2, "nodes": 1, "mixed_precision": "no",
                                       "global_batch": {"per_device": 2, "accumulation": 1, "processes": 2, "rows": 4}}
    assert double.stderr.count("runs as data parallel (DDP over gloo) over 2 processes on 1 node") == 1
    assert "ran as data parallel (DDP over gloo) over 2 processes on 1 node, mixed precision off; global batch 4 " \
           "rows per optimizer step (2 per device x 1 accumulation x 2 processes)" in double.stdout
    assert json.loads((one / "run.json").read_text())["distributed"]["global_batch"]["rows"] == 4
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


def test_one_node_of_several_gets_the_launchers_options_and_the_join_timeout():
    from dpo_cli.train.launch import Nodes, launch_command

    nodes = Nodes.parse(2, 1, "10.0.0.1:29400", 120)
    assert "node 1 of 2: waiting up to 120 s (--join-timeout) for all 2 nodes to join at 10.0.0.1:29400" \
        in nodes.waiting()
    cpu = launch_command(["r.yaml"], 4, None, "cpu", nodes)
    assert cpu[1:] == ["--nproc_per_node", "4", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
                       "--master_port", "29400", "--rdzv-conf", "timeout=120", "-m", "dpo_cli", "train", "r.yaml"]
    gpu = launch_command(["r.yaml"], 4, None, "cuda", nodes)
    assert gpu[1:] == ["launch", "--num_processes", "8", "--num_machines", "2", "--machine_rank", "1",
                       "--main_process_ip", "10.0.0.1", "--main_process_port", "29400", "--rdzv_conf", "timeout=120",
                       "-m", "dpo_cli", "train", "r.yaml"]
    assert Nodes.parse(1, None, None, 600).waiting() is None


@pytest.mark.parametrize("nproc, precompute", [(1, False), (8, True)])
def test_a_dry_run_plans_for_the_processes_it_is_given(capsys, tmp_path, nproc, precompute):
    """20 steps of 8 rows see 40 % of the 404 demo rows in one process and every row in eight: the reference is
    precomputed on a GPU only when every row is seen, so the plan must count all processes."""
    import json

    from helpers import run_cli

    code, out, err = run_cli(capsys, "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"), f"output_dir={tmp_path}",
                             "--nproc", str(nproc), "--gpu-memory", "80GB", "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["processes"] == nproc
    assert plan["global_batch"] == {"per_device": 8, "accumulation": 1, "processes": nproc, "rows": 8 * nproc}
    chosen = next(d for d in plan["defaults"] if d["key"] == "ref_model.precompute")
    assert chosen["value"] is precompute and f"20 steps x {8 * nproc} rows" in chosen["reason"]


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


@pytest.mark.slow
def test_sigterm_to_the_nproc_wrapper_stops_every_worker_with_a_checkpoint(tiny_model, tmp_path):
    """The wrapper passes the signal to the launcher, which hands it to the workers: they stop after the same step
    with a checkpoint, the main one says so once, and the wrapper exits 143 after them."""
    import psutil

    from dpo_cli.train import checkpoints

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    wrapper = subprocess.Popen([sys.executable, "-m", "dpo_cli", "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"),
                                f"output_dir={out}", "trainer.max_steps=200", "trainer.logging_steps=1",
                                "trainer.per_device_train_batch_size=2", "data.eval=null", "--nproc", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert wrapper.poll() is None and time.time() < deadline, "no step logged"
        time.sleep(0.2)
    started = psutil.Process(wrapper.pid).children(recursive=True)  # the launcher and both workers
    assert len(started) >= 3
    wrapper.send_signal(signal.SIGTERM)
    _, err = wrapper.communicate(timeout=300)

    assert wrapper.returncode == 143, err[-3000:]
    assert err.count("stopped by SIGTERM") == 1 and "Traceback" not in err and "signal" not in err.replace(
        "stopped by SIGTERM", ""), err[-3000:]
    saved = checkpoints.newest_complete(out)[0]
    assert saved is not None and f"checkpoint saved in {saved}" in err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["checkpoint"] == str(saved)
    assert int(saved.name.split("-")[1]) < 200
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_a_node_that_never_joins_ends_the_wait_with_one_message(tiny_model, tmp_path):
    """Node 0 of two started alone: it says what it waits for, and gives up after --join-timeout with one line."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"),
                           f"output_dir={tmp_path / 'run'}", "--nproc", "1", "--nnodes", "2", "--node-rank", "0",
                           "--master", f"127.0.0.1:{port}", "--join-timeout", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.time() - started < 90  # the timeout plus starting Python twice on a busy machine, not torch's 600 s
    assert f"node 0 of 2: waiting up to 3 s (--join-timeout) for all 2 nodes to join at 127.0.0.1:{port}" in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1/2 clients joined" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_fsdp_asked_of_a_machine_without_gpus_says_what_runs_instead(tiny_model, tmp_path):
    """accelerate launch with fsdp2.yaml on CPU runs plain data parallel in the config's bf16: the run says so once,
    plans bf16 (what accelerate's autocast does), and records what ran."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "recipes" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2", "-m", "dpo_cli",
                           "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"), f"output_dir={out}",
                           "trainer.max_steps=2", "data.eval=null"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["distributed"]["type"] == "MULTI_CPU" and manifest["distributed"]["asked"] == "FSDP"
    assert manifest["distributed"]["mixed_precision"] == "bf16" and manifest["device"]["precision"] == "bf16"
    assert manifest["distributed"]["global_batch"]["rows"] == 16
    assert done.stderr.count("warning: the Accelerate config asks for FSDP, but this run is data parallel") == 1
    assert "ran as data parallel (DDP over gloo) over 2 processes" in done.stdout


@pytest.mark.slow
def test_a_recipe_at_odds_with_the_launchers_mixed_precision_is_one_line_from_one_rank(tiny_model, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "recipes" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2", "-m", "dpo_cli",
                           "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"), f"output_dir={tmp_path / 'run'}",
                           "trainer.bf16=false"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the Accelerate config this run was launched with asks for mixed_precision: bf16, which "
                      "accelerate applies to every process, but the recipe sets trainer.bf16=false; remove "
                      "trainer.bf16 from the recipe or set mixed_precision: no in the config"], done.stderr[-3000:]
    assert "dpo_cli/" not in done.stderr  # no worker traceback (accelerate launch adds its own ChildFailedError)


@pytest.mark.slow
def test_zero2_on_a_machine_without_gpus_runs_in_the_configs_bf16(tiny_model, tmp_path):
    """DeepSpeed takes mixed precision from the config; the run's plan follows it instead of failing every rank."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "recipes" / "accelerate" / "zero2.yaml"), "--num_processes", "2", "-m", "dpo_cli",
                           "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"), f"output_dir={out}",
                           "trainer.max_steps=1", "data.eval=null"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())["distributed"]
    assert (record["type"], record["zero_stage"], record["mixed_precision"]) == ("DEEPSPEED", 2, "bf16")
    assert "ran as DeepSpeed ZeRO-2 over 2 processes" in done.stdout
