"""Row checks shared by every format: message shape, roles and their order, empty or identical responses."""

from __future__ import annotations

import json
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
    "identical": "chosen and rejected are identical, or differ only in whitespace",
    "bad-role": "a role is unknown or turns are out of order",
    "last-not-assistant": "the last turn of a response is not from the assistant",
    "prompt-mismatch": "chosen and rejected do not share the same prompt turns",
    "mixed-format": "the row is in a different format from the rest of its file",
    "bad-value": "a field has a value outside what the format allows",
    "non-text": "a content part is not text (an image without an images column, audio or video)",
    "bad-image": "an image is missing, unreadable, not an image, or a URL (only local images are read)",
    "image-count": "the <image> placeholders (image content parts) do not match the row's images one to one",
    "bad-tool-call": "a tool call or tool list is not valid JSON of the expected shape",
    "filter": "the --where expression could not be evaluated on this row",
}

# checks that are reported but do not stop a row
WARNINGS = {
    "score-order": "the chosen response's score is below the rejected one's (the row is kept as labelled)",
    "unsafe-chosen": "the chosen response is marked unsafe (is_response_N_safe: false)",
    "read-twice": "a file named twice, read the same way both times: its rows are in the data twice",
    "loss-weight": "an assistant turn TRL trains on has a weight of 0 (loss_weight, weight), which TRL cannot honour",
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


def reject_record(error: DataError, row: dict | None) -> dict:
    """A bad row as a rejects file keeps it: where, which check, which field, why, and the row itself."""
    return {"file": str(error.file), "line": error.line, "check": check_of(error), "field": error.field,
            "message": error.reason, "row": row}


class Omitted(Exception):
    """A valid row that gives no output for the shape asked for (for SFT, a KTO row labelled undesirable); counted
    under ``reason`` (a key of OMISSIONS), never an error."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# reason -> what it means; rows left out on purpose are counted and said, never silently lost
OMISSIONS = {
    "undesirable": "rows labelled undesirable (label false), which supervised fine-tuning does not imitate",
    "not-safe-vs-unsafe": "pairs that are not one safe and one unsafe response (--preference safe-only)",
    "tie": "ties: both responses scored or ranked the same (equal scores, preference strength 0, status tie), so "
           "neither is preferred",
    "below-threshold": "rows with no two responses whose scores differ by at least the --pairs threshold",
}


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


def message(value: Any, at: Where, field: str) -> dict[str, Any]:
    """One ``{role, content}`` message, checked; tool calls, content parts and reasoning are normalised, other keys
    (``loss_weight``, ``weight``, ...) dropped."""
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
    if type(content) is str and len(value) == 2:  # the common case, kept cheap
        return {"role": role, "content": content}
    return _rich_message(value, role, content, at, field)


def _rich_message(value: dict, role: str, content: Any, at: Where, field: str) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role}
    reasoning = value.get("reasoning_content")
    calls: list[dict] = []
    if type(content) is list:
        content, part_reasoning, calls = content_parts(content, at, field)
        if part_reasoning:
            reasoning = (reasoning or "") + part_reasoning
    raw_calls = value.get("tool_calls")
    if raw_calls is not None:
        calls += tool_calls(raw_calls, at, f"{field}.tool_calls")
    if content is None:
        if not calls:
            raise at.error("missing-field" if "content" not in value else "null-field",
                           "message has no 'content'", field)
        content = ""  # OpenAI leaves content null on a tool call; chat templates expect text
    elif type(content) is not str:
        raise at.error("wrong-type", f"message content must be text, found {_kind(content)}", field)
    out["content"] = content
    if calls:
        if role != "assistant":
            raise at.error("bad-role", f"only an assistant turn can call tools, not {role}", field)
        out["tool_calls"] = calls
    if reasoning:
        out["reasoning_content"] = text(reasoning, at, f"{field}.reasoning_content")
    if role == "tool":  # some templates name the tool or the call a result answers
        for key in ("name", "tool_call_id"):
            if type(value.get(key)) is str:
                out[key] = value[key]
    return out


def content_parts(parts: list, at: Where, field: str) -> tuple[str, str, list[dict]]:
    """``[{"type": "text", "text"|"value": ...}, ...]`` -> (joined text, reasoning, tool calls).

    Text parts are joined without a separator, as LLaMA-Factory renders them; ``reasoning`` and ``tool_call`` parts
    (LLaMA-Factory v1) become reasoning_content and tool_calls; anything else (images, audio) is refused by name.
    """
    texts, reasoning, calls = [], [], []
    for i, part in enumerate(parts):
        where = f"{field}.content[{i}]"
        if type(part) is str:
            texts.append(part)
            continue
        if type(part) is not dict:
            raise at.error("wrong-type", f"a content part must be an object with a type, found {_kind(part)}",
                           where)
        kind = part.get("type")
        body = part.get("text", part.get("value"))
        if kind in ("text", "input_text", "output_text", "reasoning", "tool_call"):
            if type(body) is not str:
                raise at.error("wrong-type", f"a {kind} part needs its text under 'text' or 'value'", where)
            if kind == "reasoning":
                reasoning.append(body)
            elif kind == "tool_call":
                calls += tool_calls(_json_value(body, at, where), at, where)
            else:
                texts.append(body)
        else:
            raise at.error("non-text", f"content part type {kind!r} is not text; dpo-cli reads images as "
                           "{\"type\": \"image\"} parts with the images in the row's images column (drop the "
                           "part, or keep its text in a text part)", where)
    return "".join(texts), "".join(reasoning), calls


def _json_value(value: Any, at: Where, field: str) -> Any:
    if type(value) is not str:
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise at.error("bad-tool-call", f"not valid JSON ({exc.args[0].split(':')[0]})", field) from None


def tool_calls(value: Any, at: Where, field: str) -> list[dict]:
    """OpenAI ``[{"type": "function", "function": {"name", "arguments"}}]`` or bare ``{"name", "arguments"}`` objects
    (LLaMA-Factory's function_call turns), one or a list -> the OpenAI shape with arguments as an object, which is
    what transformers' chat templates render."""
    value = _json_value(value, at, field)
    calls = value if type(value) is list else [value]
    out = []
    for i, call in enumerate(calls):
        if type(call) is not dict:
            raise at.error("bad-tool-call", f"tool call {i} must be an object, found {_kind(call)}", field)
        function = call.get("function", call) if call.get("type", "function") == "function" else None
        if type(function) is not dict or type(function.get("name")) is not str:
            raise at.error("bad-tool-call", f"tool call {i} must have a function name and arguments", field)
        arguments = _json_value(function.get("arguments", {}), at, field)
        if type(arguments) is not dict:
            raise at.error("bad-tool-call", f"the arguments of tool call {i} ({function['name']}) must be a JSON "
                           f"object, found {_kind(arguments)}", field)
        canonical: dict[str, Any] = {"id": call["id"]} if type(call.get("id")) is str else {}
        canonical.update(type="function", function={"name": function["name"], "arguments": arguments})
        out.append(canonical)
    return out


def tools(value: Any, at: Where, field: str = "tools") -> list[dict] | None:
    """A tools column (a JSON string, as LLaMA-Factory stores it, or a list) -> a list of OpenAI function schemas;
    None when there are none. Bare ``{name, description, parameters}`` schemas are wrapped as
    ``{"type": "function", "function": ...}``, the form transformers and OpenAI document."""
    if value is None or value == "":
        return None
    value = _json_value(value, at, field)
    items = [value] if type(value) is dict else value
    if type(items) is not list:
        raise at.error("bad-tool-call", f"tools must be a list of function schemas, found {_kind(value)}", field)
    out = []
    for i, item in enumerate(items):
        if type(item) is not dict:
            raise at.error("bad-tool-call", f"tool {i} must be an object, found {_kind(item)}", field)
        if item.get("type") != "function":
            item = {"type": "function", "function": item}
        if type(item.get("function")) is not dict or type(item["function"].get("name")) is not str:
            raise at.error("bad-tool-call", f"tool {i} has no function name", field)
        out.append(item)
    return out or None


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


def check_response(turn: dict[str, Any], at: Where, field: str) -> None:
    if turn["role"] != "assistant":
        raise at.error("last-not-assistant", f"the response must be an assistant turn, not {turn['role']}", field)
    content = turn["content"]
    if (not content or content.isspace()) and "tool_calls" not in turn:
        raise at.error("empty-response", "response is empty or whitespace only", field)


def check_pair(prompt: list[dict[str, str]], chosen: dict[str, str], rejected: dict[str, str],
               at: Where) -> dict[str, Any]:
    """Check a conversational pair and return it as TRL's canonical row."""
    check_prompt(prompt, at)
    check_response(chosen, at, "chosen")
    check_response(rejected, at, "rejected")
    check_distinct(chosen, rejected, at)
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}


def _words(value: Any) -> Any:
    """A response with its whitespace runs made one space and its ends trimmed (text, or a message's content)."""
    if type(value) is str:
        return " ".join(value.split())
    if type(value) is dict and type(value.get("content")) is str:
        return {**value, "content": " ".join(value["content"].split())}
    return value


def _ends_differ(chosen: Any, rejected: Any) -> bool:
    """True when the first or the last words of two answers differ, so their words cannot all be the same; this
    reads only the ends of each text."""
    if type(chosen) is dict and type(rejected) is dict:
        chosen, rejected = chosen.get("content"), rejected.get("content")
    if type(chosen) is not str or type(rejected) is not str:
        return False
    first, last = chosen.split(None, 1), rejected.split(None, 1)
    return first[:1] != last[:1] or chosen.rsplit(None, 1)[-1:] != rejected.rsplit(None, 1)[-1:]


def check_distinct(chosen: Any, rejected: Any, at: Where) -> None:
    """A pair must prefer one answer over another: the same answer twice, or twice with only whitespace changed
    (a trailing space or newline), teaches nothing but a preference for whitespace."""
    if chosen == rejected:
        raise at.error("identical", "chosen and rejected are identical", "rejected")
    if _ends_differ(chosen, rejected):  # most pairs: settled without splitting both answers into words
        return
    if _words(chosen) == _words(rejected):
        raise at.error("identical", "chosen and rejected differ only in whitespace (spaces, tabs or newlines); a "
                       "pair must differ in what it says", "rejected")


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
        # a turn out of place (a system turn in the middle) is the mistake of the side that holds it, not a
        # difference for the other side to be blamed for
        check_order(turns, at, field)
    if chosen[:-1] != rejected[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1])) if a != b),
                    min(len(chosen), len(rejected)) - 1)
        raise at.error("prompt-mismatch", f"chosen and rejected differ at turn {turn}, before their final "
                       f"assistant turn, so they share no prompt", "rejected")
    return chosen[:-1], chosen[-1], rejected[-1]
