"""Checkpoints that are complete or absent: staged, marked, renamed into place, rotated after; and picked for resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import DpoCliError, InputError

MARKER = "dpo-cli-checkpoint.json"  # written last: a checkpoint without it is incomplete
STAGING = ".partial-checkpoints"
_STEP = re.compile(r"^checkpoint-(\d+)$")


class SaveFailedError(DpoCliError):
    """A checkpoint could not be written; the previous one is untouched."""


def _barrier(trainer) -> None:
    trainer.accelerator.wait_for_everyone()


def install(trainer, identity: dict[str, Any]) -> None:
    """Make ``trainer`` stage each checkpoint, mark it complete, rename it into place, and only then rotate.

    ``identity`` (recipe and data fingerprints) goes into the marker so a resume can refuse a changed run.
    transformers writes checkpoints in place and rotates inside the same call; a crash or a full disk in the
    middle leaves a half-written folder that every other tool later resumes from.
    """
    args = trainer.args
    keep = args.save_total_limit
    args.save_total_limit = None  # rotation is ours, after the new checkpoint is complete
    write_checkpoint = trainer._save_checkpoint

    def save_checkpoint(model, trial):
        run_dir = Path(args.output_dir)
        staging = run_dir / STAGING
        name = f"checkpoint-{trainer.state.global_step}"
        try:
            args.output_dir = str(staging)
            try:
                write_checkpoint(model, trial)
            finally:
                args.output_dir = str(run_dir)
            _barrier(trainer)
            if args.should_save:
                replace_pickled_args(staging / name, args)
                atomic_write_text(staging / name / MARKER,
                                  json.dumps({"step": trainer.state.global_step, **identity}, indent=2))
                final = run_dir / name
                if final.exists():  # the same step saved again (a resumed run): replace it
                    shutil.rmtree(final)
                os.replace(staging / name, final)
                shutil.rmtree(staging, ignore_errors=True)  # TRL leaves a model card there
                _fix_best_path(trainer.state, staging, run_dir)
                rotate(run_dir, keep, protect=trainer.state.best_model_checkpoint)
            _barrier(trainer)
        except OSError as exc:
            shutil.rmtree(staging / name, ignore_errors=True)
            previous = newest_complete(run_dir)[0]
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise SaveFailedError(f"saving {name} failed ({exc.strerror or exc}); {kept}") from exc

    trainer._save_checkpoint = save_checkpoint


def replace_pickled_args(folder: Path, args) -> None:
    """Replace transformers' pickled training_args.bin (needs an unsafe torch.load) by a JSON copy."""
    pickled = folder / "training_args.bin"
    if pickled.exists():
        pickled.unlink()
    atomic_write_text(folder / "training_args.json", args.to_json_string())


def _fix_best_path(state, staging: Path, run_dir: Path) -> None:
    if state.best_model_checkpoint and str(state.best_model_checkpoint).startswith(str(staging)):
        state.best_model_checkpoint = str(run_dir / Path(state.best_model_checkpoint).name)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint folder, newest first."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        match = _STEP.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def rotate(run_dir: Path, keep: int | None, protect: str | None = None) -> None:
    if not keep or keep <= 0:
        return
    complete = [path for _, path in checkpoints(run_dir) if problem(path) is None]
    for path in complete[keep:]:
        if protect is None or Path(protect).resolve() != path.resolve():
            shutil.rmtree(path, ignore_errors=True)


def _safetensors_problem(path: Path) -> str | None:
    """A cheap integrity check: the header parses and the file is as long as the header says."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return f"{path.name} is truncated"
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            return f"{path.name} is truncated"
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} has a corrupt header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"{path.name} is truncated ({size} bytes, header says {8 + header_len + end})"
    return None


def problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete."""
    if not (path / MARKER).is_file():
        return "no completion marker (the save was interrupted)"
    state = path / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is corrupt"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no model weights (*.safetensors)"
    for file in weights:
        issue = _safetensors_problem(file)
        if issue:
            return issue
    return None


def newest_complete(run_dir: Path, warn=None) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that is complete; the reasons each newer one was skipped."""
    skipped = []
    for _, path in checkpoints(run_dir):
        issue = problem(path)
        if issue is None:
            return path, skipped
        skipped.append(f"skipping {path}: {issue}")
        if warn:
            warn(skipped[-1])
    return None, skipped


def resolve_resume(run_dir: Path, resume: str, warn) -> Path:
    """``auto``: the newest complete checkpoint in ``run_dir``; else the given checkpoint, which must be complete."""
    if resume == "auto":
        found, _ = newest_complete(run_dir, warn)
        if found is None:
            raise InputError(f"--resume auto: no complete checkpoint in {run_dir}")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise InputError(f"--resume {resume}: no such checkpoint directory")
    issue = problem(path)
    if issue:
        raise InputError(f"--resume {resume}: cannot resume from it: {issue}")
    return path


def identity_diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable lines for each recipe key or data fingerprint that changed since the checkpoint."""
    lines = []
    for section in ("recipe", "data"):
        old, new = _flatten(recorded.get(section, {})), _flatten(current.get(section, {}))
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                lines.append(f"{section}.{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return lines


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out
