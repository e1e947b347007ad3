"""Benchmark: synthetic alpaca rows -> canonical TRL jsonl, dpo-cli convert-data against a seed-002-style pandas script.

Each measurement runs in its own child process; its peak RSS comes from os.wait4's resource usage for that child
alone, and its time is the wall clock of the whole process (interpreter start and imports included).

    python benchmarks/convert_data.py                      # 100,000 and 1,000,000 rows
    python benchmarks/convert_data.py --rows 20000 --rows 100000 --workdir /tmp/bench

Not a test: it prints a table and the two ratios the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a model data answer question river plant capital water soil light warm quick brown seven "
         "数据 模型 回答 问题 河流 植物 首都").split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Alpaca preference rows, a third with an input, a tenth of them Chinese-heavy; deterministic."""
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"instruction": sentence(rng.randint(6, 20)), "input": sentence(5) if i % 3 == 0 else "",
                   "chosen": sentence(rng.randint(20, 60)), "rejected": sentence(rng.randint(10, 40))}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def baseline(input_path: str, output_path: str) -> int:
    """The seed-002 way: pandas read_json, iterrows, build dicts, json.dump of one list."""
    import pandas as pd

    df = pd.read_json(input_path, lines=True)
    records = []
    for _, row in df.iterrows():
        instruction = row["instruction"]
        user = f"{instruction}\n{row['input']}" if row["input"] else instruction
        records.append({
            "prompt": [{"role": "user", "content": user}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        })
    with open(output_path, "w", encoding="utf-8") as file:
        json.dump(records, file, indent=4, ensure_ascii=False)
    return len(records)


def measure(command: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one child process.

    CPU seconds (user + system) are reported beside wall time because on a shared machine the wall clock also
    measures the neighbours."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="row counts (default 100000 and 1000000)")
    parser.add_argument("--workdir", type=Path, help="where the synthetic files go (default: a temp dir)")
    parser.add_argument("--no-baseline", action="store_true", help="measure dpo-cli only")
    parser.add_argument("--baseline-child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        baseline(*args.baseline_child)
        return

    sizes = sorted(args.rows or [100_000, 1_000_000])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dpo-cli-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    results = []
    try:
        for n in sizes:
            source = workdir / f"alpaca_{n}.jsonl"
            if not source.exists():
                generate(source, n)
            out = workdir / f"dpo_cli_{n}.jsonl"
            seconds, cpu, rss = measure([sys.executable, "-m", "dpo_cli", "convert-data", str(source), "-o",
                                         str(out), "--force"], env)
            results.append(("dpo-cli convert-data", n, seconds, cpu, rss))
            print(f"dpo-cli   {n:>9,} rows  {seconds:8.1f} s  {cpu:8.1f} cpu-s  {rss:7.0f} MiB", flush=True)
            if not args.no_baseline:
                out = workdir / f"baseline_{n}.json"
                seconds, cpu, rss = measure([sys.executable, __file__, "--baseline-child", str(source), str(out)],
                                            env)
                results.append(("pandas baseline", n, seconds, cpu, rss))
                print(f"baseline  {n:>9,} rows  {seconds:8.1f} s  {cpu:8.1f} cpu-s  {rss:7.0f} MiB", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| tool | rows | wall s | rows/s (wall) | CPU s | rows/CPU-s | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for tool, n, seconds, cpu, rss in results:
        print(f"| {tool} | {n:,} | {seconds:.1f} | {n / seconds:,.0f} | {cpu:.1f} | {n / cpu:,.0f} | {rss:.0f} |")
    ours = {n: (s, c, r) for tool, n, s, c, r in results if tool.startswith("dpo-cli")}
    theirs = {n: (s, c, r) for tool, n, s, c, r in results if tool.startswith("pandas")}
    print()
    for n in sizes:
        if n in theirs:
            print(f"speed at {n:,} rows: dpo-cli is {theirs[n][0] / ours[n][0]:.1f}x the baseline's rows/s "
                  f"(wall), {theirs[n][1] / ours[n][1]:.1f}x per CPU second")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"dpo-cli peak RSS at {large:,} rows / at {small:,} rows: {ours[large][2] / ours[small][2]:.2f}")
        if small in theirs and large in theirs:
            print(f"baseline peak RSS at {large:,} rows / at {small:,} rows: "
                  f"{theirs[large][2] / theirs[small][2]:.2f}")


if __name__ == "__main__":
    main()
