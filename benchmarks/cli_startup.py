"""Wall time of the CLI's quick paths, median and spread of several runs, each in a fresh process:

- `dpo-cli --help` (must not import torch),
- a trainer-field typo in an override, `train recipes/quickstart.yaml trainer.betaa=0.2`, on a warm cache of TRL's
  config fields (must exit 2 with a did-you-mean in under 1 s),
- `train recipes/quickstart.yaml --dry-run` (target: under 5 s).

    python benchmarks/cli_startup.py [--runs 7]

One untimed run of each comes first, so the cache of TRL's config fields and the built-in tiny model exist (a cold
first typo check imports TRL once to fill the cache). The load average is printed beside the figures: on a busy
machine the wall times grow; the child's CPU time (user + system) grows much less.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")

# (what, arguments, expected exit code, target in seconds or None)
CASES = [
    ("--help", ["--help"], 0, None),
    ("trainer-field typo, warm cache", ["train", QUICKSTART, "trainer.betaa=0.2"], 2, 1.0),
    ("--dry-run of quickstart", ["train", QUICKSTART, "--dry-run"], 0, 5.0),
]


def timed(command: list[str], expected: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child, user and system): CPU time moves less with the machine's load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expected:
        sys.exit(f"{' '.join(command)} exited {done.returncode}, expected {expected}:\n{done.stderr[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    script = Path(sys.executable).with_name("dpo-cli")  # the console script of this environment
    head = [str(script)] if script.exists() else [sys.executable, "-m", "dpo_cli"]
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"command: {' '.join(head)} ...; {runs} runs each after one untimed warm-up run")
    print(f"{'case':32} {'wall: median':>12} {'min':>6} {'max':>6} {'CPU s: median':>13} {'target':>11}  "
          f"load avg (1 min) before/after")
    for what, args, expected, target in CASES:
        timed(head + args, expected)  # warm-up: fills the field cache, builds the tiny model
        before = os.getloadavg()[0]
        walls, cpus = zip(*(timed(head + args, expected) for _ in range(runs)))
        median = statistics.median(walls)
        verdict = "" if target is None else f"< {target:g} {'ok' if median < target else 'MISSED'}"
        print(f"{what:32} {median:12.2f} {min(walls):6.2f} {max(walls):6.2f} {statistics.median(cpus):13.2f} "
              f"{verdict:>11}  {before:.1f}/{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
