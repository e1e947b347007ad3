"""What every run goes through, training or data-making: where it may write, run.json from start to a true end, and
the lifecycle around both (open_run)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import InputError, Interrupted
from dpo_cli.core.paths import check_output, check_output_file, replaceable_directory, run_lock
from dpo_cli.core.rundir import RunDir
from dpo_cli.recipe.schema import Recipe
from dpo_cli.train import checkpoints
from dpo_cli.train.device import DevicePlan
from dpo_cli.train.ranks import check_shared_folder

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


def check_output_dir(run: RunDir, recipe: Recipe, *, overwrite: bool, resuming: bool = False) -> None:
    """output_dir must be writable, must not hold or be anything the run reads, and is only ever written over when
    it holds an earlier dpo-cli run (and --overwrite says so)."""
    check_output(run.path, recipe.local_inputs(), what="output_dir")
    for _, rejects in recipe.rejects_files():  # the run writes these too: an existing one only with --overwrite
        check_output_file(rejects, recipe.local_inputs(), what="rejects file", force=overwrite or resuming,
                          flag="--overwrite", owned=run.path)
    if run.path.exists() and not run.path.is_dir():
        raise InputError(f"output_dir {run} is a file, not a directory")
    existing = next(p for p in (run.path, *run.path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"output_dir {run} cannot be written: {existing} is read-only for this user")
    if resuming or not run.path.exists() or not any(run.path.iterdir()):
        return
    if not overwrite:
        raise InputError(f"output directory {run} is not empty; pass --overwrite to write over it, "
                         f"or choose another with output_dir=DIR")
    replaceable_directory(run.path, RunDir.MANIFEST, "output_dir")


class RunRecord:
    """run.json as the run moves on: rewritten whole and atomically, by the main process alone. A run that stops on
    a signal or an error after it started writing ends as ``interrupted`` or ``failed``, with the error and the
    newest complete checkpoint, never as ``running``."""

    def __init__(self, run: RunDir, is_main: bool, manifest: dict[str, Any]):
        self.run, self.is_main, self.manifest = run, is_main, manifest
        self.written = False

    def update(self, **fields) -> None:
        self.manifest.update(fields)
        if self.is_main:
            self.run.write_manifest(self.manifest)
            self.written = True

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None or not self.written or self.manifest["status"] != "running":
            return
        stopped = isinstance(exc, (Interrupted, KeyboardInterrupt))
        checkpoint = checkpoints.newest_complete(self.run.path)[0]
        self.update(status="interrupted" if stopped else "failed", finished_at=now(),
                    error=str(exc) or type(exc).__name__, checkpoint=str(checkpoint) if checkpoint else None)


@contextlib.contextmanager
def open_run(recipe: Recipe, plan: DevicePlan, processes: int, is_main: bool, *, overwrite: bool,
             resuming: bool = False) -> Iterator[tuple[RunDir, RunRecord]]:
    """The lifecycle every run goes through, training (runner/run.py) or data-making (stages/pairs.py): output_dir
    checked, every process past that check before the main one writes, output_dir the same folder on every node,
    then run.json started and output_dir locked by the main process while the body runs. Yields (the run's
    directory, its RunRecord); an error or signal in the body ends run.json as failed or interrupted.

    Every process of the run calls it (it waits for the others)."""
    from accelerate import PartialState

    run = RunDir(recipe.output_dir)
    check_output_dir(run, recipe, overwrite=overwrite, resuming=resuming)
    PartialState().wait_for_everyone()  # no process may look at output_dir once the main one writes to it
    check_shared_folder(run.path)  # several nodes: checkpoints, --resume and a later stage's reads need one folder
    record = RunRecord(run, is_main, start_manifest(recipe.stage, plan, processes))
    with run_lock(run.path) if is_main else contextlib.nullcontext(), record:
        yield run, record
