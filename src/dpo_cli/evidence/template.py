"""What a chat template leaves out of the rows it renders: tool calls, reasoning and tool schemas, counted."""

from __future__ import annotations

from collections import Counter
from typing import Any

# per-turn fields that only reach the model if the template renders them, and the row-level one
TURN_FIELDS = ("tool_calls", "reasoning_content")
ROW_FIELD = "tools"
SAMPLE = 2000  # rows holding such fields checked at most (each costs a few renders)
READ = 20000  # training rows read at most to find them (each decodes its JSON columns)
WHAT = {"tool_calls": "assistant turns' tool_calls", "reasoning_content": "assistant turns' reasoning_content",
        "tools": "rows' tools"}


def _conversations(row: dict) -> list[tuple[list[dict], int]]:
    """The conversations the trainer renders from a canonical row, each with the index of its first turn not
    already checked in an earlier one (a pair's chosen and rejected share their prompt turns)."""
    if type(row.get("messages")) is list:
        return [(row["messages"], 0)]
    prompt = row.get("prompt")
    if type(prompt) is not list:
        return []
    sides = [row[k] for k in ("chosen", "rejected", "completion") if type(row.get(k)) is list]
    if not sides:
        return [(prompt, 0)]
    return [(prompt + side, 0 if i == 0 else len(prompt)) for i, side in enumerate(sides)]


class TemplateDrops:
    """Counts the turns (and rows) whose tool calls, reasoning or tool schemas the tokenizer's chat template renders
    no differently from their absence: the trainer would train without them, silently. A field counts as left out
    when the conversation rendered without it is the same text (Qwen3's template, say, drops the reasoning of turns
    before the last user turn: those count too)."""

    def __init__(self, tokenizer, sample: int = SAMPLE):
        self.tokenizer = tokenizer
        self.sample = sample
        self.counts: Counter = Counter()
        self.checked = 0  # rows holding such fields that were checked
        self.skipped = 0  # rows holding such fields beyond the sample
        self.stopped_at: int | None = None  # rows read, when the caller stopped before the end

    def _render(self, turns: list[dict], tools: Any) -> str | None:
        try:
            return self.tokenizer.apply_chat_template(turns, tools=tools or None, tokenize=False)
        except Exception:  # a template that cannot render the row without the field: it reads the field
            return None

    def add(self, row: dict) -> None:
        conversations = _conversations(row)
        tools = row.get(ROW_FIELD)
        held = any(type(turn) is dict and any(turn.get(name) for name in TURN_FIELDS)
                   for turns, first in conversations for turn in turns[first:])
        if not (held or tools) or not conversations or not getattr(self.tokenizer, "chat_template", None):
            return
        if self.checked >= self.sample:
            self.skipped += 1
            return
        self.checked += 1
        for turns, first in conversations:
            rendered = self._render(turns, tools)
            if rendered is None:
                continue
            for i in range(first, len(turns)):
                for name in TURN_FIELDS:
                    if type(turns[i]) is dict and turns[i].get(name):
                        without = turns[:i] + [{k: v for k, v in turns[i].items() if k != name}] + turns[i + 1:]
                        if self._render(without, tools) == rendered:
                            self.counts[name] += 1
        if tools:
            rendered = self._render(conversations[0][0], tools)
            if rendered is not None and self._render(conversations[0][0], None) == rendered:
                self.counts[ROW_FIELD] += 1

    def message(self) -> str | None:
        """One warning for them all, or None when the template renders everything the rows hold."""
        if not self.counts:
            return None
        total = sum(self.counts.values())
        parts = ", ".join(f"{self.counts[name]:,} {WHAT[name]}" for name in (*TURN_FIELDS, ROW_FIELD)
                          if self.counts[name])
        sampled = f" (of the first {self.checked:,} rows holding them)" if self.skipped else \
            f" (in the first {self.stopped_at:,} rows)" if self.stopped_at else ""
        return (f"the chat template leaves out what {total:,} turns and rows hold ({parts}){sampled}: the model "
                "is trained without them; use a chat template that renders them (model.chat_template)")


def _may_hold(rows) -> bool:
    """Whether a training dataset can hold such fields: dpo-cli stores turns with more than role and content, and
    the tools column, as JSON (data/cache.py), so a dataset without JSON columns holds none and is not read
    row by row."""
    features = getattr(rows, "features", None)
    if features is None:
        return True
    try:
        from datasets import Json
    except ImportError:
        return True
    return any(isinstance(feature, Json) or isinstance(getattr(feature, "feature", None), Json)
               for feature in features.values())


def template_warning(tokenizer, rows) -> str | None:
    """The warning training gives before its first step when the chat template ignores tool calls, reasoning or
    tool schemas the rows hold; None otherwise."""
    if not _may_hold(rows):
        return None
    drops = TemplateDrops(tokenizer)
    for read, row in enumerate(rows, start=1):
        drops.add(row)
        if drops.skipped:
            break
        if read >= READ and read < len(rows):
            drops.stopped_at = read
            break
    return drops.message()
