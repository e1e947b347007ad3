"""Format adapters: pure functions from one raw row to TRL's canonical row, raising DataError on bad input."""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .readers import Record

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def _messages(value: Any, record: Record, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of messages", file=record.file, line=record.line, field=field)
    for i, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataError(f"message {i} must be an object with string 'role' and 'content'",
                            file=record.file, line=record.line, field=field)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _split_implicit(chosen: list, rejected: list, record: Record) -> tuple[list, list, list]:
    """Split two full conversations at a turn boundary: shared leading turns are the prompt."""
    if chosen[:-1] != rejected[:-1]:
        raise DataError("chosen and rejected differ before their last turn, so no shared prompt can be taken; "
                        "give an explicit 'prompt'", file=record.file, line=record.line, field="chosen")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def trl_preference(record: Record) -> dict[str, Any]:
    """TRL's own preference rows: standard strings or conversational messages, explicit or implicit prompt."""
    row = record.row
    missing = [c for c in ("chosen", "rejected") if c not in row]
    if missing:
        found = ", ".join(sorted(row)) or "none"
        raise DataError(f"missing column(s) {', '.join(missing)} for preference data "
                        f"(expected prompt, chosen, rejected; found: {found})",
                        file=record.file, line=record.line, field=missing[0])
    for field in ("chosen", "rejected"):
        if row[field] is None:
            raise DataError("is null", file=record.file, line=record.line, field=field)
    if isinstance(row["chosen"], str):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise DataError("plain-text rows need a string 'prompt' (a shared character prefix is not a prompt)",
                            file=record.file, line=record.line, field="prompt")
        for field in ("chosen", "rejected"):
            if not isinstance(row[field], str) or not row[field].strip():
                raise DataError("expected a non-empty string", file=record.file, line=record.line, field=field)
        return {"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}
    chosen = _messages(row["chosen"], record, "chosen")
    rejected = _messages(row["rejected"], record, "rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _messages(row["prompt"], record, "prompt")
    else:
        prompt, chosen, rejected = _split_implicit(chosen, rejected, record)
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise DataError("last message must be from the assistant", file=record.file, line=record.line,
                            field=field)
        if not turns[-1]["content"].strip():
            raise DataError("response is empty", file=record.file, line=record.line, field=field)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# kind of data a stage needs -> adapter
ADAPTERS = {"preference": trl_preference}
