"""Each entry of the bad-input catalogue (tests/catalogue.py, docs/errors.md) gets exactly its message and exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from catalogue import CASES, Special
from helpers import run_cli


def _matches(pattern: str, text: str) -> bool:
    """Exact match, where '*' in the catalogue stands for a part that depends on the machine."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return text == pattern
    if not (text.startswith(parts[0]) and text.endswith(parts[-1])):
        return False
    position = len(parts[0])
    for part in parts[1:-1]:
        position = text.find(part, position)
        if position < 0:
            return False
        position += len(part)
    return True


# Reading the 1500-stage pipeline takes PyYAML seconds (test_safety checks the same ring in the fast lane); the
# full disk at the final save comes after a training step.
SLOW = {"pipeline-long-cycle", "final-save-disk-full"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.name in SLOW else [])
                                  for c in CASES])
def test_catalogue_entry(case, capsys, tmp_path, tiny_model, monkeypatch):
    for name, content in case.files.items():
        path = tmp_path / name
        if name.endswith("/"):  # an empty directory
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Special):
            os.mkfifo(path) if content.kind == "fifo" else path.symlink_to(content.target)
        elif isinstance(content, bytes):  # a file that is not UTF-8 text
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp_path)), encoding="utf-8")
    if case.fault is not None:
        case.fault(monkeypatch, tmp_path)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in case.argv]
    if case.timeout is None:
        code, _, err = run_cli(capsys, *argv)
    else:  # a hang would stop here, not hang the suite
        done = subprocess.run([sys.executable, "-m", "dpo_cli", *argv], capture_output=True, text=True,
                              timeout=case.timeout)
        code, err = done.returncode, done.stderr
    last = err.strip().splitlines()[-1]
    assert code == case.exit_code, err
    assert _matches("error: " + case.message.replace("{tmp}", str(tmp_path)), last), last
    assert "Traceback" not in err


def test_catalogue_has_at_least_thirty_entries_with_unique_names():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


def test_the_catalogue_page_is_generated_from_this_list():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("make_error_catalogue", REPO / "scripts" / "make_error_catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "errors.md").read_text(encoding="utf-8") == module.render(), \
        "docs/errors.md is stale: run python scripts/make_error_catalogue.py"
