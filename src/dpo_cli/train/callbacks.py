"""Trainer callbacks: metrics.jsonl, progress (a rich bar on a terminal, plain lines otherwise), checkpoints marked."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dpo_cli.core import console
from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.train import checkpoints
from dpo_cli.train.ranks import first_problem
from dpo_cli.train.trl_compat import take_over_checkpoint_rotation

# The few metrics worth a place on the progress line; everything is in metrics.jsonl.
_HEADLINE = ("loss", "rewards/accuracies", "rewards/margins", "reward", "objective/scores", "loss/policy_avg",
             "eval_loss", "eval_rewards/accuracies")


def _split(logs: dict) -> str:
    if "train_runtime" in logs:
        return "summary"
    return "eval" if any(k.startswith("eval_") for k in logs) else "train"


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsFileCallback(TrainerCallback):
    """Append one JSON object per logged step to ``metrics.jsonl`` (main process only).

    A resumed run keeps the lines up to its checkpoint's step, so the file reads as one uninterrupted run.
    """

    def __init__(self, path: Path, keep_until: int | None = None):
        self.path = Path(path)
        self.keep_until = keep_until

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        kept = []
        if self.keep_until is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if json.loads(line)["step"] <= self.keep_until and json.loads(line)["split"] != "summary"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "split": _split(logs)}
        record.update({k: _clean(v) for k, v in logs.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _headline(logs: dict, short: bool = False) -> str:
    """The headline metrics; ``short`` keeps only the last part of each name, to fit beside a progress bar."""
    shown = [k for k in _HEADLINE if isinstance(logs.get(k), (int, float))]
    return "  ".join(f"{k.rsplit('/', 1)[-1] if short else k} {logs[k]:.4g}" for k in shown)


class ProgressCallback(TrainerCallback):
    """A rich progress bar when stderr is a terminal, else one plain line per log."""

    def __init__(self, live: bool | None = None):
        self.live = sys.stderr.isatty() if live is None else live
        self.progress = self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not (state.is_world_process_zero and self.live):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold blue]training"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.description}"), transient=False,
                                 console=console.stderr)
        self.progress.start()
        self.task = self.progress.add_task("", total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or _split(logs) == "summary":
            return
        line = _headline(logs, short=self.progress is not None)
        if self.progress is not None:
            self.progress.update(self.task, description=line)
        elif line:
            console.note(f"step {state.global_step}/{state.max_steps}  {line}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class CompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint complete once the trainer has written all of it, and only then rotates old ones.

    transformers writes checkpoint-<step> in place and rotates inside the same save; a crash or a full disk in the
    middle leaves a half-written folder (and maybe no complete one). Here rotation waits for the marker, and a
    folder without one is never resumed from. ``identity`` (recipe and data fingerprints) goes into the marker so a
    resume can refuse a changed run.
    """

    def __init__(self, args, identity: dict[str, Any]):
        self.identity = identity
        self.keep = take_over_checkpoint_rotation(args)  # rotation is ours, after the new checkpoint is complete

    def on_save(self, args, state, control, **kwargs):
        run_dir = Path(args.output_dir)
        folder = run_dir / f"checkpoint-{state.global_step}"
        if args.world_size > 1:
            # every rank writes its own RNG state into the checkpoint, and may get here before the others have
            from accelerate import PartialState

            PartialState().wait_for_everyone()
            missing = checkpoints.missing_rank_files(folder, args) if args.should_save else None
            problem = first_problem(
                f"{folder} lacks {', '.join(missing)} that the other ranks wrote: output_dir is not one folder all "
                f"of them see (with several nodes it must be shared storage); the checkpoint is left unmarked and "
                f"is never resumed from" if missing else None)
            if problem:
                raise checkpoints.SaveFailedError(problem)
        if not args.should_save:  # only the main process writes
            return
        checkpoints.replace_pickled_args(folder, args)
        files = {f.name: {"bytes": f.stat().st_size, "sha256": checkpoints.file_digest(f)}
                 for f in sorted(folder.iterdir()) if f.is_file() and f.name != checkpoints.MARKER}
        marker = {"step": state.global_step, "files": files, **self.identity}
        atomic_write_text(folder / checkpoints.MARKER, json.dumps(marker, indent=2))
        checkpoints.rotate(run_dir, self.keep, protect=state.best_model_checkpoint)
