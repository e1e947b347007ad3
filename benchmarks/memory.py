"""Peak memory and wall time of DPO with each reference strategy, on a ~100M-parameter random model (no download).

    PYTHONPATH=src python benchmarks/memory.py [--pairs 16] [--layers 14]

Each configuration runs `dpo-cli`'s own training flow (run.train on a recipe) in a child process of its own, so peak
resident memory (ru_maxrss) belongs to that configuration alone. Prints one table and the two checks the README
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

    from dpo_cli.tiny import ensure_tiny_chat

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

    from dpo_cli.recipe import load_recipe
    from dpo_cli.run import train

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
    return {"name": name, "peak_rss_kib": peak, "baseline_rss_kib": baseline, "wall_s": wall,
            "train_s": train_runtime, "steps": result.manifest.get("global_step")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16, help="demo pairs in the one-epoch run")
    parser.add_argument("--layers", type=int, default=14, help="decoder layers (14 gives about 100M parameters)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="extra alternating shared/cached runs for the wall-time comparison (minimum is kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.child:
        workdir = Path(args.workdir)
        print(json.dumps(child(args.child, workdir, workdir / "model", workdir / "pairs.jsonl")))
        return 0

    from dpo_cli.tiny import asset_path

    with tempfile.TemporaryDirectory(prefix="dpo-cli-memory-") as tmp:
        workdir = Path(tmp)
        rows = asset_path("demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:args.pairs]
        (workdir / "pairs.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        params = build_model(workdir / "model", args.layers)
        weight_bytes = params * 4
        print(f"model: random Llama, {params / 1e6:.1f}M parameters, float32 weights {weight_bytes / 2**20:.0f} MiB; "
              f"{args.pairs} pairs, batch 2, max_length 64, one epoch", flush=True)
        results, timings = {}, {"lora_shared": [], "lora_cached": []}
        # every configuration once, then shared and cached alternately: on a shared machine the minimum of
        # alternating runs is the fairest wall-time comparison
        order = list(CONFIGS) + ["lora_shared", "lora_cached"] * args.repeats
        for name in order:
            done = subprocess.run([sys.executable, __file__, "--child", name, "--workdir", str(workdir)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(name, r)
            if name in timings:
                timings[name].append(r)
            print(f"  done {name}: peak {r['peak_rss_kib'] / 1024:.0f} MiB, {r['wall_s']:.1f} s "
                  f"(training {r['train_s']:.1f} s)", flush=True)

    print(f"\n{'configuration':<50} {'peak RSS':>10} {'above imports':>14} {'run':>8} {'training':>9}")
    for name, (label, _) in CONFIGS.items():
        r = results[name]
        above = (r['peak_rss_kib'] - r['baseline_rss_kib']) / 1024
        print(f"{label:<50} {r['peak_rss_kib'] / 1024:>7.0f} MiB {above:>10.0f} MiB {r['wall_s']:>7.1f}s "
              f"{r['train_s']:>8.1f}s")
    saved = (results["lora_separate"]["peak_rss_kib"] - results["lora_shared"]["peak_rss_kib"]) * 1024
    share = saved / weight_bytes
    print(f"\nshared vs separate reference (LoRA): saves {saved / 2**20:.0f} MiB = {share:.0%} of one model's weight "
          f"bytes ({weight_bytes / 2**20:.0f} MiB): {'PASS' if share >= 0.9 else 'FAIL'} (needs >= 90%)")
    for key in ("wall_s", "train_s"):
        shared = min(r[key] for r in timings["lora_shared"])
        cached = min(r[key] for r in timings["lora_cached"])
        what = "whole run" if key == "wall_s" else "trainer.train() only"
        print(f"one epoch, {what}, best of {len(timings['lora_cached'])}: cached reference log-probs {cached:.1f} s vs "
              f"{shared:.1f} s computing the reference every step ({shared / cached:.2f}x faster)")
    print(f"the run that computed and cached the log-probs took {results['lora_precompute']['wall_s']:.1f} s")
    print(f"\n{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    return 0 if share >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
