"""The one channel for what dpo-cli tells a person: results on stdout; notes, warnings and errors on stderr.

Rich leaves out colour and cursor movement when the stream is not a terminal or NO_COLOR is set. Messages are printed
as plain text, never as markup, so a path or a YAML list in brackets prints as written, and with every known secret
scrubbed. Soft wrapping keeps a long message on one line, where it can be copied and searched.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from dpo_cli.core.redact import redact_text

# Consoles without a fixed file write to whatever sys.stdout / sys.stderr is at print time (pytest's capture too).
stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """Something worth knowing that needs no action: a cache hit, a stage skipped, where a file went."""
    stderr.print(Text(redact_text(message)))


def warn(message: str) -> None:
    """Something the user should look at; the run goes on."""
    stderr.print(Text.assemble(("warning: ", "bold yellow"), redact_text(message)))


def error(message: str) -> None:
    """Why a command stopped (cli.main prints it; the exit code says the rest)."""
    stderr.print(Text.assemble(("error: ", "bold red"), redact_text(message)))
