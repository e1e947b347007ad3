"""Wall time of `dpo-cli --help` (the path that must not import torch), median of several runs.

    python benchmarks/cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    script = Path(sys.executable).with_name("dpo-cli")  # the console script of this environment
    command = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "dpo_cli", "--help"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    print(f"{' '.join(command)}: median {statistics.median(times):.3f} s, max {max(times):.3f} s over {runs} runs")


if __name__ == "__main__":
    main()
