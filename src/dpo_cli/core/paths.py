"""Where a command may write: never over, around or inside what it reads, and a run directory one run at a time."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from dpo_cli.core import console
from dpo_cli.core.errors import InputError

LOCK = ".dpo-cli.lock"


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


# Files that make a directory a saved model, adapter or tokenizer: writing among them would corrupt it
_MODEL_FILES = ("adapter_config.json", "tokenizer_config.json", "tokenizer.json")
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


def model_directory(path: Path) -> Path | None:
    """The saved model (or adapter, or tokenizer) directory that ``path`` lies inside, if any."""
    for folder in path.parents:
        if any((folder / name).is_file() for name in _MODEL_FILES) or (
                (folder / "config.json").is_file() and any(next(folder.glob(w), None) for w in _WEIGHTS)):
            return folder
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Two names of one file (a hard link, or a symbolic link resolve() did not see through)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(output: str | Path, reads: Iterable[str | Path], *, what: str = "output",
                 allowed: Iterable[str | Path] = (), owned: str | Path | None = None) -> None:
    """Refuse an ``output`` that is, contains or lies inside anything the command reads, or lies inside a saved model.

    ``reads`` are the command's inputs (files or directories, run directories included); ``allowed`` are the paths
    inside them the command itself owns (a run's report.html), which it may replace; ``owned`` is a directory the
    command writes (a run's output_dir), which may hold a saved model of its own.
    """
    out = _resolved(output)
    allowed = {_resolved(a) for a in allowed}
    if out in allowed:
        return
    for source in reads:
        src = _resolved(source)
        if out == src or _same_file(out, src):
            raise InputError(f"{what} {output} is the input {source}: writing it would destroy what is being read; "
                             f"choose another path")
        if src.is_relative_to(out):
            raise InputError(f"{what} {output} contains the input {source}: replacing it would destroy what is being "
                             f"read; choose another path")
        if out.is_relative_to(src) and src.is_dir():
            raise InputError(f"{what} {output} lies inside the input {source}; write it elsewhere")
    model = model_directory(out)
    if model is not None and not (owned is not None and model.is_relative_to(_resolved(owned))):
        raise InputError(f"{what} {output} lies inside the saved model {model}; writing there would corrupt it: "
                         f"write it elsewhere")


def check_output_file(output: str | Path, reads: Iterable[str | Path], *, what: str = "output", force: bool = False,
                      flag: str = "--force", allowed: Iterable[str | Path] = (),
                      owned: str | Path | None = None) -> None:
    """The check of every file a command writes (-o, --rejects, a data source's rejects:): never an input, never
    inside an input directory or a saved model, never a directory, and an existing file only with ``flag`` (or when
    it is one of the ``allowed`` files the command owns, such as a run's report.html)."""
    allowed = list(allowed)
    check_output(output, reads, what=what, allowed=allowed, owned=owned)
    path = Path(output)
    if _resolved(path) in {_resolved(a) for a in allowed}:
        return
    if path.is_dir():
        raise InputError(f"{what} {output} is a directory; give a file name")
    if path.exists() and not force:
        raise InputError(f"{what} {output} exists; pass {flag} to replace it")


def replaceable_directory(path: str | Path, marker: str, what: str) -> None:
    """An existing, non-empty directory may be replaced only when a dpo-cli command made it (``marker`` inside)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise InputError(f"{what} {path} is not empty and was not written by dpo-cli (no {marker} in it); "
                         f"--overwrite only replaces dpo-cli's own output: choose an empty or new directory")


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[None]:
    """Hold ``directory``'s exclusive lock while the body runs; a second holder is refused with the first's pid.

    The lock is an flock on a small file, so it dies with its process: a lock file left by a process that is gone
    is taken over, with a note. The file is removed on the way out, while still locked.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    fd = _acquire(path, directory)
    try:
        previous = _holder(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            console.note(f"taking over the lock of {directory} left by pid {previous['pid']}, which is no longer "
                         f"running")
        os.ftruncate(fd, 0)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": started}).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(fd)  # closing releases the flock


def _acquire(path: Path, directory: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(f"{directory} is in use by another dpo-cli run (pid {holder.get('pid', '?')}, started "
                             f"{holder.get('started', '?')}); wait for it to finish or choose another output_dir") \
                from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed this file after we opened it: lock the new one


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
