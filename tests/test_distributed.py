"""Several processes on CPU: torchrun with two ranks matches one process with the same global batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from dpo_cli.train.launch import SHIPPED_CONFIGS, accelerate_config_path, config_warnings, load_accelerate_config
from dpo_cli.train.recipe_load import load_recipe

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
def test_sigterm_while_the_main_process_prepares_the_data_stops_every_rank_promptly(tiny_model, tmp_path):
    """The signal lands while rank 0 writes the prepared rows and rank 1 waits for them: both stop, the wrapper says
    so once and exits 143, the half-written rows are gone, output_dir stays empty, and no rank is left waiting for
    the launcher's kill (30 s after its SIGTERM)."""
    import psutil

    data, cache, out = tmp_path / "big.jsonl", tmp_path / "cache", tmp_path / "run"
    with data.open("w") as f:
        for i in range(40_000):
            f.write(json.dumps({"prompt": f"question {i} about plants", "chosen": f"a helpful answer {i} " * 20,
                                "rejected": f"no {i}"}) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    wrapper = subprocess.Popen([sys.executable, "-m", "dpo_cli", "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"),
                                f"output_dir={out}", f"data.train={data}", f"data.cache_dir={cache}", "data.eval=null",
                                "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300

    def scratch() -> list:  # data/cache.py prepares into a hidden folder and renames it when done
        return [p for p in cache.glob(".*") if p.name != ".digests"] if cache.is_dir() else []

    while not scratch():
        assert wrapper.poll() is None and time.time() < deadline, "the rows were never being prepared"
        time.sleep(0.05)
    started = psutil.Process(wrapper.pid).children(recursive=True)
    wrapper.send_signal(signal.SIGTERM)
    signalled = time.time()
    _, err = wrapper.communicate(timeout=300)

    assert wrapper.returncode == 143, err[-3000:]
    assert time.time() - signalled < 25, "a rank waited for the launcher to kill it"
    assert err.count("stopped by SIGTERM") == 1 and "Traceback" not in err, err[-3000:]
    assert scratch() == [] and not any(out.iterdir()), list(out.iterdir())  # run.json starts once the data is in
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


def test_a_stop_hidden_under_torchs_metrics_wrapper_is_still_a_stop(monkeypatch, capsys):
    """torch's metrics wrapper, hit by SIGTERM on its first line, raises UnboundLocalError over the SignalException
    (seen in CI): the launcher still exits 143 without a traceback."""
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from dpo_cli.train.launch import _launcher_main

    def interrupted(_args):
        try:
            raise SignalException("got signal: 15", sigval=signal.SIGTERM)
        except SignalException:
            raise UnboundLocalError("cannot access local variable 'start'") from None

    monkeypatch.setattr(torch.distributed.run, "run", interrupted)
    assert _launcher_main("torchrun", ["--nproc_per_node", "1", "train.py"]) == 143
    assert "Traceback" not in capsys.readouterr().err

    def broken(_args):
        raise UnboundLocalError("a real defect")

    monkeypatch.setattr(torch.distributed.run, "run", broken)
    with pytest.raises(UnboundLocalError):
        _launcher_main("torchrun", ["--nproc_per_node", "1", "train.py"])


def test_an_accelerate_config_gets_the_recipes_bounds_on_aliases(tmp_path):
    """A "billion laughs" in an Accelerate config is one line naming it, before accelerate expands it."""
    from dpo_cli.core.errors import InputError

    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    bomb.write_text("distributed_type: MULTI_GPU\n" + "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bomb.yaml:\d+: YAML aliases expand this value to more than"):
        load_accelerate_config(bomb)


@pytest.mark.slow
def test_a_signal_during_the_step_end_exchange_stops_both_ranks_at_the_next_step(tmp_path):
    """Two gloo ranks: rank 0 gets SIGTERM while it waits in the step-end all_reduce for rank 1 (which comes late), so
    the flag it sent says no signal. Both ranks must go on for that step and both stop at the next; the signal was
    overwritten by the reduced flag once, and the ranks trained on to the end."""
    script = tmp_path / "exchange.py"
    script.write_text(
        "import json, os, signal, threading, time\n"
        "from types import SimpleNamespace\n"
        "import torch.distributed as dist\n"
        "from transformers import TrainerControl\n"
        "from dpo_cli.train.interrupt import GracefulStop\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "args, state = SimpleNamespace(world_size=2, device='cpu'), SimpleNamespace(global_step=1)\n"
        "with GracefulStop('dpo') as stopper:\n"
        "    stopper.phase = 'train'\n"
        "    dist.barrier()\n"
        "    if rank == 0:  # lands while rank 0 waits in the exchange\n"
        "        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "    else:\n"
        "        time.sleep(1.5)\n"
        "    first = stopper.on_step_end(args, state, TrainerControl()).should_training_stop\n"
        "    second = stopper.on_step_end(args, state, TrainerControl()).should_training_stop\n"
        "with open(f'{os.path.dirname(__file__)}/rank{rank}.json', 'w') as f:\n"
        "    json.dump({'rank': rank, 'first': first, 'second': second}, f)\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert found == [{"rank": 0, "first": False, "second": True}, {"rank": 1, "first": False, "second": True}]
