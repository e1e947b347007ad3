"""A 3-point beta sweep of the tiny DPO recipe from empty caches: each point's wall time against the first's.

    python benchmarks/sweep.py [--max-steps 20] [--values 0.05,0.1,0.2]

The sweep runs as one `dpo-cli train --sweep` child process in a fresh DPO_CLI_HOME, so the first point prepares
the rows, lets TRL tokenize them and computes the reference log-probs, and the later points find all three in the
caches. The times are the sweep's own (sweep.json: from the start of a point's run to its end, model loading and
held-out scoring included, process start and imports not).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=20, help="trainer.max_steps of every point")
    parser.add_argument("--values", default="0.05,0.1,0.2", help="the betas swept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpo-cli-sweep-bench-") as tmp:
        out = Path(tmp) / "sweep"
        env = {**os.environ, "DPO_CLI_HOME": str(Path(tmp) / "home"), "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "dpo_cli", "train", str(REPO / "recipes" / "tiny" / "dpo.yaml"),
                   "--sweep", f"trainer.beta={args.values}", f"trainer.max_steps={args.max_steps}", "plot=false",
                   f"output_dir={out}"]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
        points = json.loads((out / "sweep.json").read_text())["points"]
    points.sort(key=lambda p: p["values"]["trainer.beta"])  # grid order: the first point ran first
    first = points[0]["seconds"]
    print(f"tiny DPO recipe, {args.max_steps} steps per point, caches empty at the start")
    print(f"{'point':<22} {'seconds':>8} {'vs first':>9}  reused")
    for point in points:
        reuse = point["reuse"]
        what = "nothing (prepares, tokenizes, computes the reference)" if reuse["splits_prepared"] else \
            "prepared rows and tokens; reference log-probs " + ", ".join(
                f"{split} {event}" for split, event in (reuse["ref_logps"] or {}).items())
        print(f"{point['name']:<22} {point['seconds']:>8.1f} {first / point['seconds']:>8.2f}x  {what}")


if __name__ == "__main__":
    main()
