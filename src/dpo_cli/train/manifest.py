"""What every run records, training or data-making: the result, package versions, git commit, device, times."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from dpo_cli.core.errors import InputError
from dpo_cli.core.rundir import RunDir
from dpo_cli.train.device import DevicePlan

PACKAGES = ("dpo-cli", "trl", "transformers", "peft", "accelerate", "datasets", "torch")


@dataclass
class RunResult:
    output_dir: Path
    manifest: dict
    is_main: bool = True  # under torchrun/accelerate, only the main process reports


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start_manifest(stage: str, plan: DevicePlan, processes: int) -> dict:
    """run.json as a run begins: status running, versions, commit, device; the run adds the rest as it goes."""
    found = versions()
    return {"dpo_cli_version": found["dpo-cli"], "versions": found, "git_commit": git_commit(), "stage": stage,
            "started_at": now(), "finished_at": None, "status": "running",
            "device": {"device": plan.device, "gpus": plan.gpus, "precision": plan.precision, "reason": plan.reason,
                       "processes": processes, "host": platform.node()}}


def check_output_dir(run: RunDir, overwrite: bool) -> None:
    if run.path.exists() and any(run.path.iterdir()) and not overwrite:
        raise InputError(f"output directory {run} is not empty; pass --overwrite to write over it, "
                         f"or choose another with output_dir=DIR")
