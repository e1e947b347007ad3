"""User-facing error types; cli.py turns each into one clear line and an exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DpoCliError(Exception):
    """A failure the user can act on; never shown with a traceback unless --debug."""

    exit_code = 1
    every_rank = False  # raised alike by every process of a launched job: only the main one prints it


class Interrupted(DpoCliError):
    """A command stopped on a signal; the exit code is 128 + the signal number, as shells report it. A signal stops
    every rank of a launched job at the same step (train/interrupt.py)."""

    every_rank = True

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class InputError(DpoCliError):
    """The user gave us something we cannot use (a recipe, a file, an option): exit code 2."""

    exit_code = 2


def where(file: object | None = None, line: int | None = None, field: str | None = None) -> str:
    """Format a location as ``file:line: field 'x'`` leaving out the parts that are unknown."""
    head = str(file) if file is not None else ""
    if line is not None:
        head = f"{head}:{line}" if head else f"line {line}"
    parts = [p for p in (head, f"field '{field}'" if field else "") if p]
    return ": ".join(parts)


class LauncherConflict(InputError):
    """A recipe at odds with the launcher every process was started by (its Accelerate config): each rank finds it."""

    every_rank = True


class RecipeError(InputError):
    """Something wrong in a recipe file or a command-line override."""

    def __init__(self, message: str, *, file: object | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field = file, line, field
        location = where(file, line, field)
        super().__init__(f"{location}: {message}" if location else message)


class DataError(InputError):
    """A data file or row that cannot be turned into training rows."""

    def __init__(self, message: str, *, file: object | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field = file, line, field
        self.reason = message
        location = where(file, line, field)
        super().__init__(f"{location}: {message}" if location else message)


class ModelLoadError(InputError):
    """A model or tokenizer that cannot be found locally nor fetched."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest choice, or a list of valid choices when none is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if len(choices) <= 12:
        return f"; expected one of: {', '.join(choices)}"
    return ""
