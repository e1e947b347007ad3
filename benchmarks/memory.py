"""Peak memory and wall time of DPO with each reference strategy, on a ~100M-parameter random model (no download).

    PYTHONPATH=src python benchmarks/memory.py [--pairs 16] [--layers 14]

Each configuration runs `dpo-cli`'s own training flow (run.train on a recipe) in a child process of its own, so peak
resident memory (ru_maxrss, and VmHWM reset at the start of training) belongs to that configuration alone; the
compared ones run again, interleaved, and the table reports medians for memory and best-of for time. Prints one table and the two checks the README
quotes: the shared reference saves >= 90% of one model's weight bytes against a separate one, and a run reading
cached reference log-probs against one computing the reference at every step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

CONFIGS = {
    # name: (label, recipe lines)
    "full_separate": ("full fine-tuning, separate reference copy", ""),
    "lora_separate": ("LoRA, separate reference", "lora: {r: 16}\nref_model: {name_or_path: MODEL}\n"),
    "lora_shared": ("LoRA, shared reference (adapter disabled)", "lora: {r: 16}\n"),
    "lora_precompute": ("LoRA, reference log-probs precomputed, cache empty",
                        "lora: {r: 16}\nref_model: {precompute: true, cache_dir: CACHE}\n"),
    "lora_cached": ("LoRA, reference log-probs read from cache",
                    "lora: {r: 16}\nref_model: {precompute: true, cache_dir: CACHE}\n"),
}


def _rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def build_model(directory: Path, layers: int) -> int:
    """A randomly initialised Llama of about 100M parameters with the tiny chat tokenizer; returns its parameters."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from dpo_cli.core.builtins import ensure_tiny_chat

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_chat())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=2048, num_hidden_layers=layers,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def child(name: str, workdir: Path, model_dir: Path, data: Path) -> dict:
    """Run one configuration; report peak RSS (whole process and above the post-import baseline) and wall time."""
    import resource

    import torch  # noqa: F401  imported before the baseline so every configuration pays the same
    import trl  # noqa: F401
    from trl import DPOTrainer

    from dpo_cli.runner.run import train
    from dpo_cli.train.recipe_load import load_recipe

    # Peak RSS of the training steps alone: Linux resets the high-water mark (VmHWM) when 5 is written to clear_refs,
    # so loading transients (state dicts read before they land in the model) do not mask what the steps hold.
    trainer_class = DPOTrainer  # dpo-cli's trainer is TRL's, or a subclass of it (the reference-cache hook)
    inherited_train = trainer_class.train
    steps = {}

    def measured_train(self, *args, **kwargs):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        cpu = time.process_time()
        out = inherited_train(self, *args, **kwargs)
        # CPU seconds of the steps: on a machine shared with other jobs wall time swings several-fold, CPU time does not
        steps["cpu_s"] = time.process_time() - cpu
        steps["peak_kib"] = _rss_kib("VmHWM")
        return out

    trainer_class.train = measured_train
    baseline = _rss_kib()
    extra = CONFIGS[name][1].replace("MODEL", str(model_dir)).replace("CACHE", str(workdir / "ref-cache"))
    recipe_file = workdir / f"{name}.yaml"
    recipe_file.write_text(f"""\
stage: dpo
model: {{name_or_path: {model_dir}}}
{extra}data: {{train: {data}}}
trainer: {{num_train_epochs: 1, per_device_train_batch_size: 2, max_length: 64, learning_rate: 1.0e-5,
          gradient_checkpointing: false, save_strategy: "no", logging_steps: 100, dataloader_num_workers: 0}}
output_dir: {workdir / name}
""", encoding="utf-8")
    start = time.perf_counter()
    result = train(load_recipe(recipe_file), overwrite=True)  # repeats reuse the directory
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    summary = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train_runtime = next((m["train_runtime"] for m in summary if "train_runtime" in m), None)
    return {"name": name, "peak_rss_kib": peak, "baseline_rss_kib": baseline, "train_peak_kib": steps["peak_kib"],
            "train_cpu_s": steps["cpu_s"],
            "wall_s": wall,
            "train_s": train_runtime, "steps": result.manifest.get("global_step")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16, help="demo pairs in the one-epoch run")
    parser.add_argument("--layers", type=int, default=14, help="decoder layers (14 gives about 100M parameters)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="extra interleaved runs of separate, shared and cached (memory: median; time: best)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.child:
        workdir = Path(args.workdir)
        print(json.dumps(child(args.child, workdir, workdir / "model", workdir / "pairs.jsonl")))
        return 0

    from dpo_cli.core.builtins import asset_path

    with tempfile.TemporaryDirectory(prefix="dpo-cli-memory-") as tmp:
        workdir = Path(tmp)
        rows = asset_path("demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:args.pairs]
        (workdir / "pairs.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        params = build_model(workdir / "model", args.layers)
        weight_bytes = params * 4
        print(f"model: random Llama, {params / 1e6:.1f}M parameters, float32 weights {weight_bytes / 2**20:.0f} MiB; "
              f"{args.pairs} pairs, batch 2, max_length 64, one epoch", flush=True)
        repeated = ("lora_separate", "lora_shared", "lora_cached")
        results, runs = {}, {name: [] for name in repeated}
        # every configuration once, then the compared ones again in turn: medians over runs interleaved in time
        order = list(CONFIGS) + list(repeated) * args.repeats
        for name in order:
            done = subprocess.run([sys.executable, __file__, "--child", name, "--workdir", str(workdir)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(name, r)
            if name in runs:
                runs[name].append(r)
            print(f"  done {name}: peak {r['peak_rss_kib'] / 1024:.0f} MiB, {r['wall_s']:.1f} s "
                  f"(training {r['train_s']:.1f} s)", flush=True)

    def med(name, key):
        return median(r[key] for r in runs.get(name) or [results[name]])

    def best(name, key):
        return min(r[key] for r in runs.get(name) or [results[name]])

    print(f"\n{'configuration':<50} {'peak RSS':>10} {'steps peak':>11} {'run':>8} {'training':>9}")
    for name, (label, _) in CONFIGS.items():
        print(f"{label:<50} {med(name, 'peak_rss_kib') / 1024:>6.0f} MiB {med(name, 'train_peak_kib') / 1024:>7.0f} "
              f"MiB {best(name, 'wall_s'):>7.1f}s {best(name, 'train_s'):>8.1f}s")
    print("(peak RSS: whole process, imports and loading included; steps peak: high-water mark of the training "
          "steps alone; memory the median, time the best of the runs of each configuration)")

    n = len(runs["lora_shared"])
    share = 0.0
    for key, what in (("peak_rss_kib", "whole process"), ("train_peak_kib", "training steps")):
        saved = (med("lora_separate", key) - med("lora_shared", key)) * 1024
        share = saved / weight_bytes
        print(f"shared vs separate reference (LoRA), {what}, median of {n}: saves {saved / 2**20:.0f} MiB = "
              f"{share:.0%} of one model's weight bytes ({weight_bytes / 2**20:.0f} MiB)")
    print(f"check on the training steps: {'PASS' if share >= 0.9 else 'FAIL'} (needs >= 90%)")
    for key, what in (("wall_s", "wall time, whole run"), ("train_s", "wall time, training"),
                      ("train_cpu_s", "CPU time, training")):
        # best of n: other jobs on the machine only ever add time, so the minimum is the least disturbed run
        shared, cached = best("lora_shared", key), best("lora_cached", key)
        print(f"one epoch, {what}, best of {n} (median): cached reference log-probs {cached:.1f} s "
              f"({med('lora_cached', key):.1f}) vs {shared:.1f} s ({med('lora_shared', key):.1f}) computing the "
              f"reference every step: {shared / cached:.2f}x")
    print(f"the run that computed and cached the log-probs took {results['lora_precompute']['wall_s']:.1f} s")
    print(f"\n{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    return 0 if share >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
