"""dpo-cli against a plain TRL script on the same DPO run: training steps/s and logged losses, side by side.

    python benchmarks/overhead.py [--steps 150] [--repeats 3]

Each run is its own child process, alternating plain / dpo-cli so drift on the machine hits both alike. Steps/s is
TRL's own ``train_steps_per_second`` (the training loop, callbacks included, not model loading).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TRAINER = {
    "beta": 0.1, "learning_rate": 5e-4, "per_device_train_batch_size": 8, "max_length": 96, "logging_steps": 5,
    "gradient_checkpointing": False, "save_strategy": "no", "report_to": "none", "use_cpu": True, "bf16": False,
}


def plain(steps: int, out: Path) -> dict:
    """What a user writes by hand with TRL: load model, reference, tokenizer and data, then DPOTrainer."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from dpo_cli.core.builtins import asset_path, ensure_tiny_chat

    path = ensure_tiny_chat()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ref_model = AutoModelForCausalLM.from_pretrained(path)
    data = load_dataset("json", data_files=str(asset_path("demo/train.jsonl")), split="train")
    data = data.select_columns(["prompt", "chosen", "rejected"])
    args = DPOConfig(output_dir=str(out), max_steps=steps, seed=42, **TRAINER)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    return {"steps_per_second": result.metrics["train_steps_per_second"],
            "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log]}


def dpo_cli(steps: int, out: Path) -> dict:
    from dpo_cli.runner.run import train
    from dpo_cli.train.recipe_load import load_recipe

    recipe_path = out.parent / "bench.yaml"
    trainer = {k: v for k, v in TRAINER.items() if k not in {"report_to", "use_cpu", "bf16"}}
    recipe_path.write_text(json.dumps({
        "stage": "dpo", "model": {"name_or_path": "builtin:tiny-chat"},
        "data": {"train": "builtin:demo/train.jsonl"},
        "trainer": {**trainer, "max_steps": steps}, "output_dir": str(out), "seed": 42,
    }))
    train(load_recipe(recipe_path))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = next(m for m in metrics if m["split"] == "summary")
    return {"steps_per_second": summary["train_steps_per_second"],
            "losses": [m["loss"] for m in metrics if m["split"] == "train"]}


def child(kind: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(steps), "--out", tmp],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(tmp, "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["plain", "dpo-cli"])
    parser.add_argument("--out")
    opts = parser.parse_args()
    if opts.worker:
        out = Path(opts.out)
        result = (plain if opts.worker == "plain" else dpo_cli)(opts.steps, out / "run")
        (out / "result.json").write_text(json.dumps(result))
        return

    runs = {"plain": [], "dpo-cli": []}
    for _ in range(opts.repeats):
        for kind in runs:
            runs[kind].append(child(kind, opts.steps))
    speed = {kind: statistics.median(r["steps_per_second"] for r in results) for kind, results in runs.items()}
    identical = all(r["losses"] == runs["plain"][0]["losses"] for results in runs.values() for r in results)
    print(f"DPO, tiny model, {opts.steps} steps, median of {opts.repeats} runs each")
    print(f"{'':10} {'steps/s':>9}")
    for kind, value in speed.items():
        print(f"{kind:10} {value:9.2f}")
    print(f"ratio dpo-cli / plain: {speed['dpo-cli'] / speed['plain']:.3f}")
    print(f"logged losses identical across all runs: {identical} ({len(runs['plain'][0]['losses'])} logged steps)")


if __name__ == "__main__":
    main()
