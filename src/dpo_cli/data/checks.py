"""Row checks shared by every format: message shape, roles and their order, empty or identical responses."""

from __future__ import annotations

from typing import Any

from dpo_cli.core.errors import DataError

# check name -> what it means; the names are what --skip-invalid counts and inspect-data reports
CHECKS = {
    "invalid-json": "the line is not valid JSON",
    "invalid-utf8": "the bytes are not valid UTF-8",
    "not-object": "the row is not a JSON object",
    "unreadable": "the row could not be read",
    "missing-field": "a required field is missing",
    "null-field": "a required field is null",
    "wrong-type": "a field has the wrong type (for example a number where text belongs)",
    "empty-prompt": "the prompt is empty or only whitespace",
    "empty-response": "a response is empty or only whitespace",
    "identical": "chosen and rejected are identical",
    "bad-role": "a role is unknown or turns are out of order",
    "last-not-assistant": "the last turn of a response is not from the assistant",
    "prompt-mismatch": "chosen and rejected do not share the same prompt turns",
    "mixed-format": "the row is in a different format from the rest of its file",
    "bad-value": "a field has a value outside what the format allows",
    "filter": "the --where expression could not be evaluated on this row",
}

# checks that are reported but do not stop a row
WARNINGS = {
    "score-order": "score_chosen is not above score_rejected",
}

ROLES = frozenset({"system", "user", "assistant", "tool"})


class RowError(DataError):
    """A row that fails one named check; ``check`` is a key of CHECKS."""

    def __init__(self, check: str, message: str, *, file: object | None = None, line: int | None = None,
                 field: str | None = None):
        self.check = check
        super().__init__(message, file=file, line=line, field=field)


def check_of(error: DataError) -> str:
    """The check a DataError belongs to (reader errors carry none: tell them apart by their message)."""
    check = getattr(error, "check", None)
    if check:
        return check
    reason = error.reason
    if reason.startswith("invalid UTF-8"):
        return "invalid-utf8"
    if reason.startswith("invalid JSON") or reason.startswith("JSON nested"):
        return "invalid-json"
    if reason.startswith("expected a JSON object"):
        return "not-object"
    return "unreadable"


class Where:
    """The file and line of the row being adapted; adapters raise through it so every error names both."""

    __slots__ = ("file", "line")

    def __init__(self, file: str, line: int):
        self.file, self.line = file, line

    def error(self, check: str, message: str, field: str | None = None) -> RowError:
        return RowError(check, message, file=self.file, line=self.line, field=field)


def require(row: dict[str, Any], name: str, at: Where, *, field: str | None = None) -> Any:
    """The value of a required column: missing and null are different mistakes with different fixes."""
    try:
        value = row[name]
    except KeyError:
        found = ", ".join(sorted(map(str, row))) or "none"
        raise at.error("missing-field", f"missing (columns found: {found})", field or name) from None
    if value is None:
        raise at.error("null-field", "is null", field or name)
    return value


def text(value: Any, at: Where, field: str) -> str:
    if value is None:
        raise at.error("null-field", "is null", field)
    if type(value) is not str:
        raise at.error("wrong-type", f"expected text, found {_kind(value)}", field)
    return value


def response_text(value: Any, at: Where, field: str) -> str:
    value = text(value, at, field)
    if not value or value.isspace():
        raise at.error("empty-response", "response is empty or whitespace only", field)
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__


def message(value: Any, at: Where, field: str) -> dict[str, str]:
    """One ``{role, content}`` message, checked; other keys are dropped."""
    if type(value) is not dict:
        raise at.error("wrong-type", f"expected a message object with 'role' and 'content', found {_kind(value)}",
                       field)
    role = value.get("role")
    if role is None:
        raise at.error("missing-field" if "role" not in value else "null-field",
                       "message has no 'role'", field)
    if type(role) is not str or role not in ROLES:
        raise at.error("bad-role", f"unknown role {role!r} (expected one of {', '.join(sorted(ROLES))})", field)
    content = value.get("content")
    if content is None:
        raise at.error("missing-field" if "content" not in value else "null-field",
                       "message has no 'content'", field)
    if type(content) is not str:
        raise at.error("wrong-type", f"message content must be text, found {_kind(content)}", field)
    return {"role": role, "content": content}


def messages(value: Any, at: Where, field: str) -> list[dict[str, str]]:
    if type(value) is not list:
        raise at.error("wrong-type", f"expected a list of messages, found {_kind(value)}", field)
    if not value:
        raise at.error("missing-field", "the list of messages is empty", field)
    return [message(m, at, f"{field}[{i}]") for i, m in enumerate(value)]


def check_order(turns: list[dict[str, str]], at: Where, field: str) -> None:
    """System only first; user and assistant alternate (tool results may follow an assistant turn)."""
    previous = None
    for i, turn in enumerate(turns):
        role = turn["role"]
        if role == "system":
            if i != 0:
                raise at.error("bad-role", f"a system message may only come first (found at turn {i})", field)
        elif role == "user":
            if previous == "user":
                raise at.error("bad-role", f"two user turns in a row at turn {i}", field)
        elif role == "assistant":
            if previous in (None, "system"):
                raise at.error("bad-role", f"the conversation starts with an assistant turn (turn {i})", field)
            if previous == "assistant":
                raise at.error("bad-role", f"two assistant turns in a row at turn {i}", field)
        elif role == "tool" and previous not in ("assistant", "tool"):
            raise at.error("bad-role", f"a tool result must follow an assistant turn (turn {i})", field)
        previous = role


def check_prompt(prompt: list[dict[str, str]], at: Where, field: str = "prompt") -> None:
    check_order(prompt, at, field)
    if prompt[-1]["role"] not in ("user", "tool"):
        raise at.error("bad-role", f"a prompt must end with a user (or tool) turn, not {prompt[-1]['role']}",
                       field)


def check_response(turn: dict[str, str], at: Where, field: str) -> None:
    if turn["role"] != "assistant":
        raise at.error("last-not-assistant", f"the response must be an assistant turn, not {turn['role']}", field)
    content = turn["content"]
    if not content or content.isspace():
        raise at.error("empty-response", "response is empty or whitespace only", field)


def check_pair(prompt: list[dict[str, str]], chosen: dict[str, str], rejected: dict[str, str],
               at: Where) -> dict[str, Any]:
    """Check a conversational pair and return it as TRL's canonical row."""
    check_prompt(prompt, at)
    check_response(chosen, at, "chosen")
    check_response(rejected, at, "rejected")
    if chosen["content"] == rejected["content"]:
        raise at.error("identical", "chosen and rejected are identical", "rejected")
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}


def split_implicit(chosen: list[dict[str, str]], rejected: list[dict[str, str]],
                   at: Where) -> tuple[list, dict, dict]:
    """Split two full conversations at a turn boundary: the shared leading turns are the prompt.

    Never at a character prefix: two conversations that differ before their final turn have no shared prompt.
    """
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise at.error("last-not-assistant", f"the last turn must be from the assistant, not "
                           f"{turns[-1]['role']}", field)
        if len(turns) < 2:
            raise at.error("missing-field", "holds only the response; a full conversation (or a separate "
                           "'prompt') is needed to know the prompt", field)
    if chosen[:-1] != rejected[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1])) if a != b),
                    min(len(chosen), len(rejected)) - 1)
        raise at.error("prompt-mismatch", f"chosen and rejected differ at turn {turn}, before their final "
                       f"assistant turn, so they share no prompt", "rejected")
    return chosen[:-1], chosen[-1], rejected[-1]
