"""Test helpers: run the CLI in-process and capture its exit code and output."""

from __future__ import annotations

import sys

import pytest


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Call dpo_cli.cli.main() with ``args``; return (exit code, stdout, stderr)."""
    from dpo_cli.cli import main

    argv = sys.argv
    sys.argv = ["dpo-cli", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err
