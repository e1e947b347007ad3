"""The defaults a GPU run gets (precomputed reference, Liger), decided per run; GPU-facing checks that run on a CPU."""

from __future__ import annotations

import importlib.util

import pytest

from dpo_cli.train.device import CPU, assumed_gpu
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.stages.base import PlannedRun

BASE = """\
stage: dpo
model: {name_or_path: builtin:tiny-chat}
data: {train: builtin:demo/train.jsonl}
"""
GPU = assumed_gpu(80 << 30)


def settled(write_recipe, extra="", device=GPU, rows=404, processes=1, name="r.yaml"):
    from dpo_cli.train.config import settle_defaults

    recipe = load_recipe(write_recipe(BASE + extra, name))
    info = {"rows": rows, "fingerprint": "f" * 64} if rows else None
    recipe, defaults = settle_defaults(recipe, PlannedRun(device, processes, lambda: info))
    return recipe, {d.key: d for d in defaults}


def test_a_run_that_sees_every_row_precomputes_on_a_gpu(tiny_model, write_recipe):
    recipe, defaults = settled(write_recipe, "trainer: {num_train_epochs: 1}\n")
    assert recipe.ref_model.precompute is True and not defaults["ref_model.precompute"].explicit
    assert "every training row" in defaults["ref_model.precompute"].reason
    steps = "trainer: {max_steps: 51, per_device_train_batch_size: 4, gradient_accumulation_steps: 2}\n"
    recipe, _ = settled(write_recipe, steps)  # 51 x 8 = 408 rows >= 404
    assert recipe.ref_model.precompute is True


def test_a_run_shorter_than_one_pass_keeps_the_per_step_reference(tiny_model, write_recipe):
    recipe, defaults = settled(write_recipe, "trainer: {max_steps: 20, per_device_train_batch_size: 2}\n")
    assert recipe.ref_model.precompute is False
    assert "10% of the training rows" in defaults["ref_model.precompute"].reason
    # the same steps on 16 processes see 20 x 2 x 16 = 640 rows: a full pass
    recipe, _ = settled(write_recipe, "trainer: {max_steps: 20, per_device_train_batch_size: 2}\n", processes=16)
    assert recipe.ref_model.precompute is True
    recipe, defaults = settled(write_recipe, "trainer: {max_steps: 20}\n", rows=None)  # data not readable here
    assert recipe.ref_model.precompute is False and "could not be counted" in defaults["ref_model.precompute"].reason


def test_a_short_run_precomputes_when_the_cache_already_holds_its_log_probs(tiny_model, write_recipe, tmp_path):
    from dpo_cli.train.refcache import RefLogpCache
    from dpo_cli.train.stages.dpo import cache_hint

    extra = f"trainer: {{max_steps: 2}}\nref_model: {{cache_dir: {tmp_path / 'c'}}}\n"
    recipe, _ = settled(write_recipe, extra)
    assert recipe.ref_model.precompute is False
    cache = RefLogpCache(tmp_path / "c", hint=cache_hint(recipe, {"fingerprint": "f" * 64}, "bf16"))
    cache.remember("k" * 64)
    assert not cache.holds(cache.hint)  # the hint names a file that is not there
    cache.path("k" * 64).write_bytes(b"x")
    recipe, defaults = settled(write_recipe, extra)
    assert recipe.ref_model.precompute is True and "already holds" in defaults["ref_model.precompute"].reason
    # a CPU run computes nothing ahead, but it does read log-probs a run before it left on disk
    cpu_cache = RefLogpCache(tmp_path / "c", hint=cache_hint(recipe, {"fingerprint": "f" * 64}, CPU.precision))
    assert settled(write_recipe, extra, device=CPU)[0].ref_model.precompute is False
    cpu_cache.remember("k" * 64)
    recipe, defaults = settled(write_recipe, extra, device=CPU)
    assert recipe.ref_model.precompute is True and "already holds" in defaults["ref_model.precompute"].reason
    assert settled(write_recipe, extra.replace("max_steps: 2", "max_steps: 2, max_length: 64"))[
        0].ref_model.precompute is False  # other truncation: another hint


@pytest.mark.parametrize("extra, value, explicit, reason", [
    ("ref_model: {precompute: false}\n", False, True, "set by the recipe"),
    ("trainer: {precompute_ref_log_probs: false}\n", False, True, "trainer.precompute_ref_log_probs"),
    ("trainer: {sync_ref_model: true}\n", False, False, "sync_ref_model"),
])
def test_an_explicit_key_or_what_trl_cannot_do_wins_over_auto(tiny_model, write_recipe, extra, value, explicit,
                                                              reason):
    recipe, defaults = settled(write_recipe, extra)
    default = defaults["ref_model.precompute"]
    assert (default.value, default.explicit) == (value, explicit) and reason in default.reason
    from dpo_cli.train.stages.dpo import precompute_enabled

    assert precompute_enabled(recipe) is False


def test_on_a_cpu_auto_keeps_the_per_step_reference_and_liger_off(tiny_model, write_recipe):
    recipe, defaults = settled(write_recipe, device=CPU)
    assert recipe.ref_model.precompute is False and "GPU only" in defaults["ref_model.precompute"].reason
    assert "use_liger_kernel" not in recipe.trainer


def test_liger_is_on_where_it_is_installed_and_the_model_is_on_cuda(tiny_model, write_recipe, monkeypatch):
    from dpo_cli.train.trl_compat import dpo_liger_is_fused_loss

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    recipe, defaults = settled(write_recipe)
    assert recipe.trainer.get("use_liger_kernel") is None and "dpo-cli[fast]" in defaults["trainer.use_liger_kernel"].reason
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a))
    recipe, defaults = settled(write_recipe, name="again.yaml")
    # TRL 1.16 runs Liger's layer kernels beside its fused LM head; TRL 1.0's fused Liger DPO loss cannot precompute
    assert recipe.trainer.get("use_liger_kernel", False) is (not dpo_liger_is_fused_loss())
    recipe, defaults = settled(write_recipe, "trainer: {use_liger_kernel: false}\n", name="off.yaml")
    assert recipe.trainer["use_liger_kernel"] is False and defaults["trainer.use_liger_kernel"].explicit


def test_the_dry_run_says_what_was_chosen_and_why(tiny_model, write_recipe, capsys):
    from helpers import run_cli

    code, out, _ = run_cli(capsys, "train", str(write_recipe(BASE + "trainer: {num_train_epochs: 1}\n")),
                           "--dry-run", "--gpu-memory", "80GB")
    assert code == 0
    assert "ref_model.precompute true (chosen: the run sees every training row" in out
    assert "trainer.use_liger_kernel" in out and "precomputed: log-probs computed once" in out


def test_padding_free_warns_at_load_where_trl_ignores_it(tiny_model, write_recipe, capsys):
    load_recipe(write_recipe(BASE + "trainer:\n  beta: 0.1\n  padding_free: true\n"))
    err = capsys.readouterr().err
    assert "warning:" in err and "recipe.yaml:6: field 'trainer.padding_free': TRL" in err
    assert "ignores it for stage dpo" in err
    sft = BASE.replace("stage: dpo", "stage: sft") + "trainer: {padding_free: true}\n"
    load_recipe(write_recipe(sft, "sft.yaml"))  # SFT's trainer honours it
    assert "ignores" not in capsys.readouterr().err


def test_more_processes_than_gpus_is_refused_unless_asked(tiny_model, write_recipe, capsys, monkeypatch):
    from dpo_cli.train import device
    from helpers import run_cli

    monkeypatch.setattr(device, "detect_hardware", lambda: device.DevicePlan("cuda", 1, "bf16", "1 x NVIDIA H100"))
    path = str(write_recipe(BASE))
    code, _, err = run_cli(capsys, "train", path, "--nproc", "2", "--dry-run")
    assert code == 2 and "--nproc 2 starts 2 processes but this machine shows 1 GPU(s)" in err
    assert "--share-gpus" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli(capsys, "train", path, "--nproc", "2", "--share-gpus", "--dry-run")
    assert code == 0 and "--num_processes 2" in out


def test_throughput_adds_tokens_per_second_and_mfu_to_the_logs(monkeypatch):
    from dpo_cli.train import throughput as module
    from dpo_cli.train.throughput import Throughput, peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops("CPU") is None
    clock = iter([100.0, 102.0, 103.0, 104.0])
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    meter = Throughput(flops_per_token=8_000_000_000, device_name="NVIDIA H100 80GB HBM3", processes=2,
                       peak=989e12)
    meter.on_train_begin(None, None, None)
    first = {"loss": 0.69, "num_tokens": 100_000.0}
    meter.on_log(None, None, None, logs=first)
    assert first["tokens_per_second"] == 50_000.0
    assert first["mfu"] == round(25_000 * 8e9 / 989e12, 4)  # per device: the token count is over both processes
    second = {"loss": 0.6, "num_tokens": 180_000.0}
    meter.on_log(None, None, None, logs=second)
    assert second["tokens_per_second"] == 80_000.0
    summary = {"train_runtime": 4.0}
    meter.on_log(None, None, None, logs=summary)
    assert summary["tokens_per_second"] == 45_000.0 and meter.summary()["mfu"] == pytest.approx(22_500 * 8e9 / 989e12)
    unknown = Throughput(flops_per_token=1, device_name="CPU")
    assert unknown.mfu(1000.0) is None


def test_flops_per_token_counts_every_matmul_and_what_runs_each_step(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from dpo_cli.train.throughput import flops_per_token

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(model, trains_adapter=False, reference_each_step=True) == 8 * matmul
    assert flops_per_token(model, trains_adapter=True, reference_each_step=False) == 4 * matmul
