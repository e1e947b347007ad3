"""dpo-cli against a plain TRL script as the data grows: a one-step DPO run, first with cold caches, then again with
only beta changed (the second point of a sweep), wall time and peak memory; and reading the data alone.

    python benchmarks/data_scale.py [--sizes 20000 50000 200000] [--repeats 3] [--load-only]

Each run is its own child process (wall time from its start to its end, imports included; peak RSS from
getrusage), plain and dpo-cli alternating so drift on the machine hits both alike. Every repeat starts from empty
caches: the plain script's datasets cache, dpo-cli's prepared rows, and TRL's tokenized rows beside either.
The plain script is what TRL's examples do: ``load_dataset("json")`` then ``DPOTrainer``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINER = {"learning_rate": 5e-4, "per_device_train_batch_size": 8, "max_length": 256, "max_steps": 1,
           "gradient_checkpointing": False, "save_strategy": "no", "logging_steps": 1}
WORDS = ("the model answers questions about data rows files memory speed cache tokens batches prompts replies "
         "preference pairs training evaluation reference policy gradient loss margin reward").split()


def write_pairs(path: Path, n: int) -> None:
    """n conversational pairs of about 1.7 kB each, like UltraFeedback binarized's prompt and two answers."""
    rng = random.Random(n)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"{i}: {text(40)}?"}],
                                "chosen": [{"role": "assistant", "content": text(120)}],
                                "rejected": [{"role": "assistant", "content": text(110)}]}) + "\n")


def usage() -> dict:
    """Peak RSS (this process's, or its child's where the child did the work: the dpo-cli command) and CPU seconds
    of both: on a shared machine CPU seconds move less with the neighbours' load than wall time."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rss_mb": max(own.ru_maxrss, children.ru_maxrss) / 1024,
            "cpu_s": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime}


def plain(data: Path, out: Path, beta: float) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from dpo_cli.core.builtins import ensure_tiny_chat

    path = ensure_tiny_chat()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    dataset = load_dataset("json", data_files=str(data), split="train")
    args = DPOConfig(output_dir=str(out), beta=beta, seed=42, report_to="none", use_cpu=True, bf16=False, **TRAINER)
    DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer).train()


def dpo_cli(data: Path, out: Path, beta: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(json.dumps({"stage": "dpo", "model": {"name_or_path": "builtin:tiny-chat"},
                                  "data": {"train": str(data)}, "trainer": {**TRAINER, "beta": beta},
                                  "output_dir": str(out), "seed": 42}))
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "train", str(recipe)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])


def load_plain(data: Path, out: Path, beta: float) -> None:
    from datasets import load_dataset

    load_dataset("json", data_files=str(data), split="train")


def load_dpo_cli(data: Path, out: Path, beta: float) -> None:
    from dpo_cli.data.load import load_training_data

    load_training_data([str(data)])


WORKERS = {"plain": plain, "dpo-cli": dpo_cli, "load-plain": load_plain, "load-dpo-cli": load_dpo_cli}


def child(kind: str, data: Path, home: Path, out: Path, beta: float) -> dict:
    """One run in a fresh process: (seconds, peak RSS in MB)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DPO_CLI_HOME": str(home),
           "HF_DATASETS_CACHE": str(home / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", kind, "--data", str(data), "--out", str(out),
                           "--beta", str(beta)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, **report}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 200_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load-only", action="store_true", help="time reading the data alone")
    parser.add_argument("--worker", choices=list(WORKERS))
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--beta", type=float, default=0.1)
    opts = parser.parse_args()
    if opts.worker:
        WORKERS[opts.worker](Path(opts.data), Path(opts.out), opts.beta)
        print(json.dumps(usage()))
        return

    kinds = ("load-plain", "load-dpo-cli") if opts.load_only else ("plain", "dpo-cli")
    phases = ("read",) if opts.load_only else ("first", "second")
    print(f"{'rows':>8} {'phase':6} {'tool':12} {'wall s: median (min-max)':>25} {'CPU s':>22} "
          f"{'peak RSS MB':>22}  dpo-cli/plain: wall, CPU, RSS")
    for size in opts.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "pairs.jsonl"
            write_pairs(data, size)
            runs = {(phase, kind): [] for phase in phases for kind in kinds}
            for repeat in range(opts.repeats):
                for kind in kinds if repeat % 2 == 0 else reversed(kinds):
                    home = Path(tmp) / f"{kind}-{repeat}"
                    for phase, beta in zip(phases, (0.1, 0.2)):
                        runs[phase, kind].append(child(kind, data, home, home / f"run-{phase}", beta))
                    shutil.rmtree(home)
            for phase in phases:
                base = runs[phase, kinds[0]]
                for kind in kinds:
                    results = runs[phase, kind]
                    columns = [[r[name] for r in results] for name in ("seconds", "cpu_s", "rss_mb")]
                    ratio = "" if kind == kinds[0] else "  " + ", ".join(
                        f"{statistics.median(values) / statistics.median(r[name] for r in base):.2f}"
                        for values, name in zip(columns, ("seconds", "cpu_s", "rss_mb")))
                    if kind != kinds[0]:  # each repeat's pair ran back to back: their ratios show the spread
                        ratio += "; wall per repeat " + ", ".join(
                            f"{r['seconds'] / b['seconds']:.2f}" for r, b in zip(results, base))
                    print(f"{size:8,} {phase:6} {kind:12} " + " ".join(f"{spread(v):>22}" for v in columns) + ratio)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
