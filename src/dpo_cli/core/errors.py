"""User-facing error types; cli.py turns each into one clear line and an exit code."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable


class DpoCliError(Exception):
    """A failure the user can act on; never shown with a traceback unless --debug."""

    exit_code = 1
    every_rank = False  # raised alike by every process of a launched job: only the main one prints it


class Interrupted(BaseException):
    """A command stopped on a signal; the exit code is 128 + the signal number, as shells report it. A signal stops
    every rank of a launched job at the same step (train/interrupt.py).

    Like KeyboardInterrupt it is not an Exception: raised from a signal handler wherever the process happens to be,
    it must pass through every ``except Exception`` on its way out (a chat-template probe caught one and reported the
    stop as a broken template, exit 2), ours and the libraries' alike."""

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
    """Return " (did you mean 'x'?)" for the closest choice, or a list of valid choices when none is close; a name
    that differs from the choices by a look-alike character (a Cyrillic 'а' for 'a') says which character."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    note = lookalike_note(name, choices)
    if close:
        return f"; did you mean '{close[0]}'?{note}"
    if len(choices) <= 12:
        return f"; expected one of: {', '.join(choices)}{note}"
    return note


def lookalike_note(name: str, choices: Iterable[str] = ()) -> str:
    """``" ('stаge' holds 'а', U+0430 CYRILLIC SMALL LETTER A, ...)"`` when ``name`` has a character that is not ASCII
    while every choice is ASCII: such a key reads right and still matches nothing."""
    if name.isascii() or not all(c.isascii() for c in choices):
        return ""
    odd = next(c for c in name if not c.isascii())
    return (f" ('{name}' holds '{odd}', U+{ord(odd):04X} {unicodedata.name(odd, 'an unnamed character')}, which is not "
            f"ASCII however alike it looks: retype the name)")
