"""Checkpoints a resume can trust: marked complete once written, rotated only then; and picked for resume."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.errors import DpoCliError, InputError
from dpo_cli.core.redact import redact_text

MARKER = "dpo-cli-checkpoint.json"  # written last: a checkpoint without it is incomplete
# Files up to this size are hashed whole; larger ones (a 7B optimizer state is tens of GB) by size and both ends, so a
# save stays cheap: truncation always shows, a change in the middle of a huge file only through its size.
WHOLE_HASH_BYTES = 256 << 20
_SAMPLE_BYTES = 16 << 20
_STEP = re.compile(r"^checkpoint-(\d+)$")
# What a save on a full or read-only disk raises: OSError from Python's own writes, RuntimeError from torch.save
# ("PytorchStreamWriter failed writing file"), and safetensors' SafetensorError, which is neither.
SAVE_ERRORS = (OSError, RuntimeError, SafetensorError)


class SaveFailedError(DpoCliError):
    """A checkpoint could not be written; the previous one is untouched."""


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of its size and first and last 16 MiB when it is larger than WHOLE_HASH_BYTES."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(str(size).encode())
            digest.update(f.read(_SAMPLE_BYTES))
            f.seek(size - _SAMPLE_BYTES)
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def save_failure(run_dir: Path, step: int, exc: BaseException) -> SaveFailedError | None:
    """When ``exc`` ended training while checkpoint-<step> was being written: remove the partial folder and say
    which complete checkpoint is left. None when the failure was not in a save."""
    folder = Path(run_dir) / f"checkpoint-{step}"
    if not isinstance(exc, SAVE_ERRORS) or not folder.is_dir() or (folder / MARKER).exists():
        return None
    shutil.rmtree(folder, ignore_errors=True)
    previous = newest_complete(run_dir)[0]
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    return SaveFailedError(f"saving {folder.name} failed ({_reason(exc)}); {kept}")


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def save_final(trainer, run_dir: Path) -> None:
    """The final model and tokenizer into the run directory. A save that fails part way (a full disk once
    config.json is written and the weights are not) takes back every file it added, so nothing there looks like a
    saved model, and says which checkpoint a resume would start from."""
    run_dir = Path(run_dir)
    before = {p.name for p in run_dir.iterdir()}
    try:
        trainer.save_model(str(run_dir))
    except SAVE_ERRORS as exc:
        for path in run_dir.iterdir():
            if path.name in before:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        previous = newest_complete(run_dir)[0]
        kept = (f"the newest complete checkpoint {previous} is intact: resume from it with --resume auto"
                if previous else "no checkpoint was saved before it")
        raise SaveFailedError(f"saving the final model to {run_dir} failed ({_reason(exc)}); the files it had "
                              f"written are removed; {kept}") from exc


def missing_rank_files(folder: Path, args) -> list[str]:
    """The per-rank files transformers writes into a checkpoint under several processes that ``folder`` lacks."""
    if args.world_size <= 1 or args.save_only_model:
        return []
    return [name for name in (f"rng_state_{rank}.pth" for rank in range(args.world_size))
            if not (folder / name).is_file()]


def replace_pickled_args(folder: Path, args) -> None:
    """Replace transformers' pickled training_args.bin (needs an unsafe torch.load) by a JSON copy."""
    pickled = folder / "training_args.bin"
    if pickled.exists():
        pickled.unlink()
    atomic_write_text(folder / "training_args.json", redact_text(args.to_json_string()))


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
    """A cheap integrity check: safetensors reads the header and checks that its tensors cover the file exactly (the
    weights themselves are memory-mapped, not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except SafetensorError as exc:
        return f"{path.name} is truncated or corrupt ({exc})"


def problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete: its marker, then every file the
    marker lists, with its size and checksum, then the trainer state and weights themselves."""
    if not (path / MARKER).is_file():
        return "no completion marker (the save was interrupted)"
    try:
        recorded = marker(path)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past what the parser reads
        recorded = None
    if not isinstance(recorded, dict):
        return f"its completion marker {MARKER} is empty or corrupt"
    if issue := _marker_shape(recorded):
        return f"its completion marker {MARKER} is not as dpo-cli writes it ({issue})"
    state = path / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        return "trainer_state.json is corrupt"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no model weights (*.safetensors)"
    for file in weights:
        issue = _safetensors_problem(file)
        if issue:
            return issue
    for name, expected in (recorded.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            what = "truncated" if size < expected["bytes"] else "longer than when it was saved"
            return f"{name} is {what} ({size} bytes, the marker says {expected['bytes']})"
        if file_digest(file) != expected["sha256"]:
            return f"{name} has changed since it was saved (its checksum differs)"
    return None


def _marker_shape(recorded: dict) -> str | None:
    """What is wrong with a marker's values (edited by hand, or written by something else), or None."""
    files = recorded.get("files")
    if files is not None and not isinstance(files, dict):
        return "files is not a mapping of file names"
    for name, expected in (files or {}).items():
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            return f"{name!r} is not a file name inside the checkpoint"
        if not (isinstance(expected, dict) and type(expected.get("bytes")) is int
                and isinstance(expected.get("sha256"), str)):
            return f"the entry for {name} has no byte count and checksum"
    for section in ("recipe", "data"):
        if not isinstance(recorded.get(section, {}), dict):
            return f"{section} is not a mapping"
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


def marker(checkpoint: Path) -> dict[str, Any]:
    """What a complete checkpoint's marker records: its step, the recipe and the data fingerprints."""
    return json.loads((Path(checkpoint) / MARKER).read_text(encoding="utf-8"))


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
