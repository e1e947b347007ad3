"""Format adapters: small pure functions from one raw row to canonical examples, registered by name, with detection.

An adapter returns a list of canonical examples (usually one; ``ranked`` may make several pairs), each one of:

- a pair ``{"prompt", "chosen", "rejected"}`` (conversational: prompt turns, one assistant message each; or the
  standard form: three strings),
- an unpaired example ``{"prompt", "completion", "label"}``,
- a prompt-only example ``{"prompt"}``,
- a conversation ``{"messages"}``, or a prompt-completion example ``{"prompt", "completion"}``;

each with a ``tools`` list when the row declares tools (TRL's SFT and DPO trainers hand it to the chat template).
Messages are ``{role, content}``, with ``tool_calls`` on an assistant turn that calls tools (OpenAI's shape, the
arguments an object) and ``reasoning_content`` where the data has reasoning apart from the answer.

Every failure is a RowError (a DataError) naming the file, line and field; an adapter never returns None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.data import checks as c
from dpo_cli.data import images
from dpo_cli.data.checks import Omitted, RowError, Where


@dataclass(frozen=True)
class Tags:
    """How a ShareGPT-style message names its speaker and text (a LLaMA-Factory registry entry's ``tags``)."""

    role: str = "from"
    content: str = "value"
    roles: tuple[tuple[str, str], ...] = ()  # (tag value, role): role is user, assistant, system, tool or a call


@dataclass
class AdapterOptions:
    """Choices some formats need: which PKU-SafeRLHF answer is chosen, how ranked responses become pairs, and the
    message tags of a registry entry. None means not asked for: the format's default applies."""

    preference: str | None = None  # pku-saferlhf: better (default) | safer | safe-only
    pairs: str | None = None  # ranked, nectar: best-worst (default) | all | threshold=X
    warn: Callable[[RowError], None] | None = None  # rows that convert but deserve a mention
    tags: Tags | None = None  # sharegpt: set per source from a registry entry
    media_dir: str | None = None  # where relative image paths start (a registry's folder); None: the data file's

    def __post_init__(self) -> None:
        if self.preference not in (None, "better", "safer", "safe-only"):
            raise DataError(f"--preference must be 'better', 'safer' or 'safe-only', not {self.preference!r}")
        self.threshold = None
        pairs = self.pairs or "best-worst"
        if pairs.startswith("threshold="):
            try:
                self.threshold = float(pairs.split("=", 1)[1])
            except ValueError:
                raise DataError(f"--pairs threshold=X needs a number, got {pairs!r}") from None
        elif pairs not in ("best-worst", "all"):
            raise DataError(f"--pairs must be best-worst, all or threshold=X, not {pairs!r}")

    def check_applies(self, fmt: str, file: str) -> None:
        """An option for one format given for a file in another would be silently ignored: refuse it."""
        for option, value, owners in (("--preference", self.preference, ("pku-saferlhf",)),
                                      ("--pairs", self.pairs, ("ranked", "nectar"))):
            if value is not None and fmt not in owners:
                owner = " and ".join(owners)
                raise DataError(f"{option} {value} applies to {owner} data only, but this file was read as {fmt}; "
                                f"drop {option}, or convert the {owner} files on their own", file=file)


USER, ASSISTANT, SYSTEM = "user", "assistant", "system"


FUNCTION_CALL = "function_call"  # a ShareGPT turn whose text is a JSON tool call


def _user(content: str) -> dict[str, str]:
    return {"role": USER, "content": content}


def _assistant(content: str) -> dict[str, str]:
    return {"role": ASSISTANT, "content": content}


def _system_prefix(row: dict, at: Where, name: str = "system") -> list[dict[str, str]]:
    system = row.get(name)
    if system is None or system == "":
        return []
    return [{"role": SYSTEM, "content": c.text(system, at, name)}]


def _with_tools(example: dict, tools: list | None) -> dict:
    if tools:
        example["tools"] = tools
    return example


def _label_of(row: dict, at: Where) -> bool | None:
    """A KTO label (``label``, or LLaMA-Factory's ``kto_tag``) as a bool; None when the row has neither."""
    name = "label" if "label" in row else "kto_tag" if "kto_tag" in row else None
    if name is None:
        return None
    label = row[name]
    if type(label) is bool:
        return label
    if type(label) is int and label in (0, 1):
        return bool(label)
    if type(label) is str and label.lower() in ("true", "false"):
        return label.lower() == "true"
    raise at.error("wrong-type", f"must be true or false, found {label!r}", name)


def _unpaired(turns: list[dict], label: bool, at: Where, field: str) -> dict:
    """A labelled conversation as a KTO row: the last (assistant) turn is the completion, the turns before it the
    prompt."""
    c.check_order(turns, at, field)
    c.check_response(turns[-1], at, field)
    if len(turns) < 2:
        raise at.error("missing-field", "holds only the response; a KTO row needs the prompt turns before it", field)
    c.check_prompt(turns[:-1], at, field)
    return {"prompt": turns[:-1], "completion": turns[-1:], "label": label}


def _conversation(turns: list[dict], at: Where, field: str) -> dict:
    c.check_order(turns, at, field)
    c.check_response(turns[-1], at, field)
    return {"messages": turns}


def _warn_loss_weights(raw: list, trained: list[int], at: Where, field: str, options: AdapterOptions) -> None:
    """A per-turn weight (LLaMA-Factory's loss_weight, OpenAI's weight) of 0 on a turn TRL trains on: TRL has no
    such knob, so the turn is trained all the same, and that is worth a word."""
    if options.warn is None:
        return
    for i in trained:
        turn = raw[i] if type(raw[i]) is dict else {}
        if turn.get("loss_weight", turn.get("weight")) == 0:
            options.warn(at.error("loss-weight", f"turn {i} has weight 0, but TRL trains on it", field))
            return


def _name_fields(error: RowError, at: Where, names: dict[str, str]) -> RowError:
    """Name the user's column in an error raised on a canonical field (``chosen[0]`` -> ``preferred_output[0]``)."""
    field = error.field or ""
    for canonical, column in names.items():
        if field == canonical or field.startswith(canonical + "["):
            return at.error(error.check, error.reason, column + field[len(canonical):])
    return error


def _prompt_value(value: Any, at: Where, field: str = "prompt") -> str | list[dict[str, str]]:
    """A prompt given as a string or as messages (checked for order and for ending on a user turn)."""
    if type(value) is str:
        if not value.strip():
            raise at.error("empty-prompt", "prompt is empty or whitespace only", field)
        return value
    turns = c.messages(value, at, field)
    c.check_prompt(turns, at, field)
    return turns


def _pair(prompt: str | list, chosen: Any, rejected: Any, at: Where) -> dict[str, Any]:
    """A pair from a prompt and two response strings: strings stay strings only when the prompt is one."""
    chosen = c.response_text(chosen, at, "chosen")
    rejected = c.response_text(rejected, at, "rejected")
    c.check_distinct(chosen, rejected, at)
    if type(prompt) is str:
        return {"prompt": [_user(prompt)], "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}
    return {"prompt": prompt, "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}


# where public preference sets keep the scores of their chosen and rejected responses: UltraFeedback binarized and
# trl-lib's copy (score_*), Capybara-Preferences and HelpSteer binarized (*_rating), distilabel's Capybara DPO
# (rating_*), argilla's cleaned UltraFeedback (*-rating), argilla's UltraFeedback preferences (*_avg_rating)
SCORE_COLUMNS = (("score_chosen", "score_rejected"), ("chosen_rating", "rejected_rating"),
                 ("rating_chosen", "rating_rejected"), ("chosen-rating", "rejected-rating"),
                 ("chosen_avg_rating", "rejected_avg_rating"), ("chosen_score", "rejected_score"))
SCORE_NAMES = frozenset(name for pair in SCORE_COLUMNS for name in pair)


def _check_scores(row: dict, at: Where, options: AdapterOptions) -> None:
    """The labels say which response is chosen; the scores beside them can only disagree. Equal scores are a tie,
    which teaches no preference: the row is left out and counted. A chosen score below the rejected one is kept as
    labelled and counted as a warning."""
    if SCORE_NAMES.isdisjoint(row):  # most rows have no scores: one pass over their few keys
        return
    for chosen_name, rejected_name in SCORE_COLUMNS:
        sc, sr = row.get(chosen_name), row.get(rejected_name)
        if _is_number(sc) and _is_number(sr) and sc == sc and sr == sr:  # NaN is no score
            if sc == sr:
                raise Omitted("tie")
            if sc < sr and options.warn is not None:
                options.warn(at.error("score-order", f"{chosen_name} {sc} is below {rejected_name} {sr}",
                                      chosen_name))
            return


# --- trl ---------------------------------------------------------------------------------------------------------

def trl(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """TRL's preference rows: standard strings or conversational, explicit or implicit prompt."""
    chosen = c.require(row, "chosen", at)
    rejected = c.require(row, "rejected", at)
    prompt = row.get("prompt")
    if type(chosen) is str:
        if prompt is None:
            raise at.error("missing-field", "plain-text rows need a string 'prompt' (a shared character prefix "
                           "is never taken as the prompt)", "prompt")
        if type(prompt) is not str:
            raise at.error("wrong-type", "with plain-text chosen/rejected the prompt must be text too", "prompt")
        if not prompt.strip():
            raise at.error("empty-prompt", "prompt is empty or whitespace only", "prompt")
        chosen = c.response_text(chosen, at, "chosen")
        rejected = c.response_text(rejected, at, "rejected")
        c.check_distinct(chosen, rejected, at)
        _check_scores(row, at, options)
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    chosen_turns = c.messages(chosen, at, "chosen")
    rejected_turns = c.messages(rejected, at, "rejected")
    if prompt is None:
        prompt_turns, chosen_turn, rejected_turn = c.split_implicit(chosen_turns, rejected_turns, at)
    else:
        if type(prompt) is not list:
            raise at.error("wrong-type", "with conversational chosen/rejected the prompt must be a list of "
                           "messages (for a text prompt beside full conversations read it as format messages)",
                           "prompt")
        prompt_turns = c.messages(prompt, at, "prompt")
        for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
            if len(turns) != 1:
                raise at.error("bad-value", f"with an explicit prompt, {name} must be one assistant message "
                               f"(found {len(turns)}; for full conversations read it as format messages)", name)
        chosen_turn, rejected_turn = chosen_turns[0], rejected_turns[0]
    pair = c.check_pair(prompt_turns, chosen_turn, rejected_turn, at)
    _check_scores(row, at, options)
    return [_with_tools(pair, c.tools(row.get("tools"), at))]


# --- messages (OpenAI-style full conversations; DPO-En-Zh-20k, UltraFeedback binarized, Capybara DPO) ---------------

def messages(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """Full conversations in chosen/rejected; an optional prompt string or list that may repeat the user turn."""
    chosen = c.messages(c.require(row, "chosen", at), at, "chosen")
    rejected = c.messages(c.require(row, "rejected", at), at, "rejected")
    prompt = row.get("prompt")
    if len(chosen) == 1 and len(rejected) == 1:
        if prompt is None:
            raise at.error("missing-field", "chosen and rejected hold only the responses, so a prompt is needed",
                           "prompt")
        prompt_turns = [_user(c.text(prompt, at, "prompt"))] if type(prompt) is str \
            else c.messages(prompt, at, "prompt")
        chosen_turn, rejected_turn = chosen[0], rejected[0]
    else:
        prompt_turns, chosen_turn, rejected_turn = c.split_implicit(chosen, rejected, at)
        if not prompt_turns or prompt_turns[-1]["role"] == ASSISTANT:
            # the conversations do not repeat the newest user turn: the separate prompt is it
            if prompt is None:
                raise at.error("missing-field", "the conversations do not hold the user turn and no prompt is "
                               "given", "prompt")
            extra = [_user(c.text(prompt, at, "prompt"))] if type(prompt) is str \
                else c.messages(prompt, at, "prompt")
            prompt_turns = prompt_turns + extra
    pair = c.check_pair(prompt_turns, chosen_turn, rejected_turn, at)
    _check_scores(row, at, options)
    return [_with_tools(pair, c.tools(row.get("tools"), at))]


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# --- alpaca ------------------------------------------------------------------------------------------------------

def alpaca(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """instruction, input, optional system and history, then chosen/rejected (pairs), ``output: [chosen, rejected]``
    (LLaMA-Factory ranking), or an ``output`` string: SFT, or KTO with a label."""
    # The common row, checked inline (this adapter is the benchmark's hot path); anything else, valid or not, takes
    # the full path below, which gives the same result or the precise error.
    instruction, extra = row.get("instruction"), row.get("input")
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if (type(instruction) is str and type(chosen) is str and type(rejected) is str
            and (extra is None or type(extra) is str) and "system" not in row and "history" not in row
            and "tools" not in row):
        user = f"{instruction}\n{extra}" if extra else instruction
        if (user and not user.isspace() and chosen and not chosen.isspace() and rejected
                and not rejected.isspace() and chosen != rejected):
            return [{"prompt": [{"role": USER, "content": user}], "chosen": [{"role": ASSISTANT, "content": chosen}],
                     "rejected": [{"role": ASSISTANT, "content": rejected}]}]
    return [_with_tools(_alpaca_checked(row, at), c.tools(row.get("tools"), at))]


def _alpaca_checked(row: dict, at: Where) -> dict:
    instruction = c.text(c.require(row, "instruction", at), at, "instruction")
    extra = row.get("input")
    extra = "" if extra is None else c.text(extra, at, "input")
    user = f"{instruction}\n{extra}" if extra else instruction
    if not user.strip():
        raise at.error("empty-prompt", "instruction and input are both empty", "instruction")
    prompt = _system_prefix(row, at)
    history = row.get("history")
    if history is not None:
        if type(history) is not list:
            raise at.error("wrong-type", "history must be a list of [user, assistant] pairs", "history")
        for i, turn in enumerate(history):
            if type(turn) is not list or len(turn) != 2:
                raise at.error("wrong-type", f"history item {i} must be a [user, assistant] pair", "history")
            prompt.append(_user(c.text(turn[0], at, f"history[{i}][0]")))
            prompt.append(_assistant(c.text(turn[1], at, f"history[{i}][1]")))
    prompt.append(_user(user))
    if "chosen" in row or "rejected" in row:
        return _pair(prompt, c.require(row, "chosen", at), c.require(row, "rejected", at), at)
    if "output" not in row:
        found = ", ".join(sorted(map(str, row)))
        raise at.error("missing-field", f"missing: alpaca rows need an output (SFT) or chosen and rejected (pairs) "
                       f"(columns found: {found})", "output")
    output = c.require(row, "output", at)
    if type(output) is list:
        if len(output) != 2:
            raise at.error("wrong-type", "output must be a string (SFT) or a list [chosen, rejected] (pairs)",
                           "output")
        return _pair(prompt, output[0], output[1], at)
    response = _assistant(c.response_text(output, at, "output"))
    label = _label_of(row, at)
    if label is not None:
        return {"prompt": prompt, "completion": [response], "label": label}
    return {"messages": prompt + [response]}


# --- sharegpt ----------------------------------------------------------------------------------------------------

SHAREGPT_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM,
                  "observation": "tool", "tool": "tool", FUNCTION_CALL: FUNCTION_CALL}


def registry_tags(tags: dict[str, str]) -> Tags:
    """A LLaMA-Factory registry entry's ``tags`` (role_tag, user_tag, ...) over its documented defaults."""
    get = {**{"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
              "observation_tag": "observation", "function_tag": FUNCTION_CALL, "system_tag": "system"}, **tags}.get
    return Tags(get("role_tag"), get("content_tag"),
                ((get("user_tag"), USER), (get("assistant_tag"), ASSISTANT), (get("observation_tag"), "tool"),
                 (get("function_tag"), FUNCTION_CALL), (get("system_tag"), SYSTEM)))


def _sharegpt_message(value: Any, at: Where, field: str, tags: Tags | None) -> dict[str, Any]:
    if type(value) is str:
        return _assistant(value)
    if type(value) is not dict:
        raise at.error("wrong-type", "expected a message object ({from, value} or {role, content})", field)
    if tags is not None:
        tag_name, content_name, roles = tags.role, tags.content, dict(tags.roles)
    elif "from" in value or "value" in value:
        tag_name, content_name, roles = "from", "value", SHAREGPT_ROLES
    else:
        tag_name, content_name, roles = "role", "content", SHAREGPT_ROLES
    tag = value.get(tag_name)
    if tag is None:
        raise at.error("missing-field", f"message has no '{tag_name}'", field)
    role = roles.get(tag) if type(tag) is str else None
    if role is None:
        raise at.error("bad-role", f"unknown {tag_name} {tag!r} (expected one of {', '.join(sorted(roles))})", field)
    content = value.get(content_name)
    if role == FUNCTION_CALL:  # the turn's text is the call: {"name", "arguments"}, or a list of them
        if content is None:
            raise at.error("missing-field", f"message has no '{content_name}'", field)
        return {"role": ASSISTANT, "content": "", "tool_calls": c.tool_calls(content, at, field)}
    if content is None and "tool_calls" not in value:
        raise at.error("missing-field", f"message has no '{content_name}'", field)
    if type(content) is str and len(value) == 2:
        return {"role": role, "content": content}
    # OpenAI-style extras inside a ShareGPT list: content parts, tool_calls, names of tools
    rest = {k: v for k, v in value.items() if k not in (tag_name, content_name)}
    return c.message({**rest, "role": role, "content": content}, at, field)


def sharegpt(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """``conversations`` (from/value or role/content, with function_call and observation turns) plus one chosen and
    one rejected message (pairs), a label or kto_tag (KTO), or neither (SFT); optional ``system`` and ``tools``."""
    conversation = c.require(row, "conversations", at)
    if type(conversation) is not list or not conversation:
        raise at.error("wrong-type", "conversations must be a non-empty list of messages", "conversations")
    turns = [_sharegpt_message(m, at, f"conversations[{i}]", options.tags) for i, m in enumerate(conversation)]
    if turns[0]["role"] != SYSTEM:
        turns = _system_prefix(row, at) + turns
    tools = c.tools(row.get("tools"), at)
    if "chosen" in row or "rejected" in row:
        c.check_prompt(turns, at, "conversations")
        chosen = _sharegpt_message(c.require(row, "chosen", at), at, "chosen", options.tags)
        rejected = _sharegpt_message(c.require(row, "rejected", at), at, "rejected", options.tags)
        return [_with_tools(c.check_pair(turns, chosen, rejected, at), tools)]
    label = _label_of(row, at)
    if label is not None:
        return [_with_tools(_unpaired(turns, label, at, "conversations"), tools)]
    return [_with_tools(_conversation(turns, at, "conversations"), tools)]


# --- hh-rlhf -----------------------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def _hh_turns(value: Any, at: Where, field: str) -> list[dict[str, str]]:
    transcript = c.text(value, at, field)
    parts = _HH_TURN.split(transcript)
    # parts: [before, speaker, text, speaker, text, ...]
    if len(parts) < 3:
        raise at.error("bad-value", "no 'Human:' / 'Assistant:' turns found in the transcript", field)
    if parts[0].strip():
        raise at.error("bad-value", "text before the first 'Human:' turn", field)
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": USER if speaker == "Human" else ASSISTANT, "content": content.strip()})
    return turns


def hh_rlhf(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """Anthropic HH-RLHF transcripts: the shared turns are the prompt, the final Assistant turn the response."""
    chosen = _hh_turns(c.require(row, "chosen", at), at, "chosen")
    rejected = _hh_turns(c.require(row, "rejected", at), at, "rejected")
    prompt, chosen_turn, rejected_turn = c.split_implicit(chosen, rejected, at)
    return [c.check_pair(prompt, chosen_turn, rejected_turn, at)]


# --- pku-saferlhf ------------------------------------------------------------------------------------------------

def pku_saferlhf(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """prompt, response_0, response_1 and better_response_id / safer_response_id (0 or 1), is_response_N_safe.

    ``safe-only`` keeps the pairs of one safe and one unsafe answer, the safe one chosen; with ``better`` or ``safer``
    a chosen answer marked unsafe is kept and counted as a warning.
    """
    prompt = _prompt_value(c.require(row, "prompt", at), at)
    preference = options.preference or "better"
    safe = [row.get("is_response_0_safe"), row.get("is_response_1_safe")]
    if preference == "safe-only":
        for i, flag in enumerate(safe):
            if type(flag) is not bool:
                name = f"is_response_{i}_safe"
                c.require(row, name, at)
                raise at.error("wrong-type", f"must be true or false, found {flag!r}", name)
        if safe[0] == safe[1]:
            raise Omitted("not-safe-vs-unsafe")
        choice = 0 if safe[0] else 1
    else:
        key = f"{preference}_response_id"
        choice = c.require(row, key, at)
        if type(choice) is str and choice in ("0", "1"):
            choice = int(choice)
        if type(choice) is not int or choice not in (0, 1):
            raise at.error("bad-value", f"must be 0 or 1, found {choice!r}", key)
    responses = (c.require(row, "response_0", at), c.require(row, "response_1", at))
    try:
        pair = _pair(prompt, responses[choice], responses[1 - choice], at)
    except RowError as exc:  # name the source column, not the canonical one
        raise _name_fields(exc, at, {"chosen": f"response_{choice}", "rejected": f"response_{1 - choice}"}) from None
    if safe[choice] is False and options.warn is not None:
        options.warn(at.error("unsafe-chosen", f"the chosen response_{choice} is marked unsafe",
                              f"is_response_{choice}_safe"))
    return [pair]


def _prompt_column(row: dict, name: str, at: Where) -> str:
    """A required text column that holds the prompt: empty or whitespace only is an empty prompt."""
    text = c.text(c.require(row, name, at), at, name)
    if not text.strip():
        raise at.error("empty-prompt", f"{name} is empty or whitespace only", name)
    return text


# --- orca-dpo ----------------------------------------------------------------------------------------------------

def orca_dpo(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """system, question, chosen, rejected (Intel/orca_dpo_pairs); argilla's distilabel copy names the question
    ``input`` and marks the pairs its judge rated equal ``status: tie``, which are left out."""
    name = "question" if "question" in row or "input" not in row else "input"
    question = _prompt_column(row, name, at)
    prompt = _system_prefix(row, at) + [_user(question)]
    pair = _pair(prompt, c.require(row, "chosen", at), c.require(row, "rejected", at), at)
    if row.get("status") == "tie":
        raise Omitted("tie")
    return [pair]


# --- rlaif-v -----------------------------------------------------------------------------------------------------

def rlaif_v(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """openbmb/RLAIF-V-Dataset: image, question, chosen, rejected (ds_name, origin_dataset, idx, image_path are
    metadata); the image goes before the question unless the question places it with ``<image>``."""
    question = _prompt_column(row, "question", at)
    if row.get("image") is not None:
        question = images.first_user_image(question)
    return [_pair([_user(question)], c.require(row, "chosen", at), c.require(row, "rejected", at), at)]


# --- ranked, nectar ----------------------------------------------------------------------------------------------

def _pairs_by_score(prompt: str | list, texts: list[str], scores: list[float], field: str,
                    options: AdapterOptions, at: Where) -> list[dict]:
    """Pairs from n responses and their scores (higher is better), as --pairs asks: the best against the worst (equal
    scores taken in listed order), every pair with different scores, or every pair at least a threshold apart."""
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    if scores[order[0]] == scores[order[-1]]:
        raise Omitted("tie")
    if (options.pairs or "best-worst") == "best-worst":
        pairs = [(order[0], order[-1])]
    else:
        margin = options.threshold if options.threshold is not None else 0.0
        pairs = [(i, j) for i in order for j in order if scores[i] > scores[j] and scores[i] - scores[j] >= margin]
        if not pairs:
            raise Omitted("below-threshold")
    # the same text under two scores gives no preference signal
    examples = [_pair(prompt, texts[i], texts[j], at) for i, j in pairs if texts[i] != texts[j]]
    if not examples:
        raise at.error("identical", "the responses that differ in score have the same text", field)
    return examples


def ranked(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """One prompt, n responses and their scores (higher is better) or ranks (1 is best) -> preference pairs."""
    prompt = _prompt_value(c.require(row, "prompt", at), at)
    responses = c.require(row, "responses", at)
    if type(responses) is not list or len(responses) < 2:
        raise at.error("wrong-type", "responses must be a list of at least two responses", "responses")
    texts = []
    for i, response in enumerate(responses):
        name = f"responses[{i}]"
        if type(response) is dict:
            turn = c.message(response, at, name)
            c.check_response(turn, at, name)
            texts.append(turn["content"])
        else:
            texts.append(c.response_text(response, at, name))
    if "scores" in row and row["scores"] is not None:
        name, values, sign = "scores", row["scores"], 1.0
    else:
        name, values, sign = "ranks", c.require(row, "ranks", at, field="scores"), -1.0
    if type(values) is not list or len(values) != len(texts):
        raise at.error("wrong-type", f"{name} must be a list with one number per response ({len(texts)})", name)
    scores = []
    for i, value in enumerate(values):
        if not _is_number(value) or value != value:
            raise at.error("wrong-type", f"{name}[{i}] must be a number, found {value!r}", name)
        scores.append(sign * value)
    return _pairs_by_score(prompt, texts, scores, name, options, at)


def _transcript_prompt(value: Any, at: Where, field: str) -> str | list[dict[str, str]]:
    """A ``Human:``/``Assistant:`` transcript that ends on the empty ``Assistant:`` its answers complete -> prompt
    turns; text without those markers is one user turn."""
    text = c.text(value, at, field)
    if not _is_hh(text):
        if not text.strip():
            raise at.error("empty-prompt", "prompt is empty or whitespace only", field)
        return text
    turns = _hh_turns(text, at, field)
    if turns[-1]["role"] == ASSISTANT and not turns[-1]["content"]:
        turns = turns[:-1]
    if not turns:
        raise at.error("empty-prompt", "the transcript holds no Human turn", field)
    c.check_prompt(turns, at, field)
    return turns


def nectar(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """berkeley-nest/Nectar: a transcript prompt and ``answers`` ({answer, model, rank}, rank 1 the best) -> pairs
    by rank as --pairs asks: by default the best-ranked answer against the worst-ranked one."""
    prompt = _transcript_prompt(c.require(row, "prompt", at), at, "prompt")
    answers = c.require(row, "answers", at)
    if type(answers) is not list or len(answers) < 2:
        raise at.error("wrong-type", "answers must be a list of at least two {answer, model, rank} objects",
                       "answers")
    texts, scores = [], []
    for i, answer in enumerate(answers):
        name = f"answers[{i}]"
        if type(answer) is not dict:
            raise at.error("wrong-type", "expected an {answer, model, rank} object", name)
        texts.append(c.response_text(c.require(answer, "answer", at, field=f"{name}.answer"), at, f"{name}.answer"))
        rank = c.require(answer, "rank", at, field=f"{name}.rank")
        if not _is_number(rank) or rank != rank:
            raise at.error("wrong-type", f"must be a number (1 is the best), found {rank!r}", f"{name}.rank")
        scores.append(-rank)
    return _pairs_by_score(prompt, texts, scores, "answers", options, at)


# --- argilla, shp, helpsteer, align-anything ---------------------------------------------------------------------

def _named_pair(prompt: str | list, row: dict, chosen: str, rejected: str, at: Where) -> dict[str, Any]:
    """A pair from two response columns; an error names the column, not chosen or rejected."""
    try:
        return _pair(prompt, c.require(row, chosen, at), c.require(row, rejected, at), at)
    except RowError as exc:
        raise _name_fields(exc, at, {"chosen": chosen, "rejected": rejected}) from None


def argilla(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """instruction (or prompt), chosen_response, rejected_response and their ratings (argilla's
    ultrafeedback-binarized-preferences: chosen_avg_rating, rejected_avg_rating); equal ratings are a tie, left out."""
    name = "prompt" if "prompt" in row and "instruction" not in row else "instruction"
    prompt = _prompt_value(c.require(row, name, at), at, name)
    pair = _named_pair(prompt, row, "chosen_response", "rejected_response", at)
    _check_scores(row, at, options)
    return [pair]


def shp(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """Stanford Human Preferences: a post (``history``), two top-level comments ``human_ref_A`` and ``human_ref_B``,
    and ``labels`` (1: A is preferred, 0: B is)."""
    history = _prompt_column(row, "history", at)
    label = c.require(row, "labels", at)
    if type(label) is str and label in ("0", "1"):
        label = int(label)
    if type(label) is not int or label not in (0, 1):
        raise at.error("bad-value", f"must be 1 (human_ref_A preferred) or 0 (human_ref_B preferred), found "
                       f"{label!r}", "labels")
    chosen, rejected = ("human_ref_A", "human_ref_B") if label == 1 else ("human_ref_B", "human_ref_A")
    return [_named_pair(history, row, chosen, rejected, at)]


_NEMO_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n?")


def _helpsteer_prompt(row: dict, at: Where) -> str | list[dict[str, str]]:
    """HelpSteer3's ``context`` messages, or HelpSteer2's ``prompt``, whose multi-turn prompts join the turns with
    ``<extra_id_1>Assistant`` / ``<extra_id_1>User`` lines."""
    if "prompt" not in row and "context" in row:
        turns = c.messages(c.require(row, "context", at), at, "context")
        c.check_prompt(turns, at, "context")
        return turns
    text = _prompt_column(row, "prompt", at)
    parts = _NEMO_TURN.split(text)
    if len(parts) == 1:
        return text
    turns = [_user(parts[0])] + [{"role": USER if speaker == "User" else ASSISTANT, "content": content}
                                 for speaker, content in zip(parts[1::2], parts[2::2])]
    c.check_prompt(turns, at, "prompt")
    return turns


def helpsteer(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """HelpSteer2's preference rows (prompt, response_1, response_2, preference_strength) and HelpSteer3's (context,
    response1, response2, overall_preference), strength -3 to 3: below 0 the first response is preferred, above 0
    the second; 0 (about the same) is a tie, left out."""
    name = "preference_strength" if "preference_strength" in row or "overall_preference" not in row \
        else "overall_preference"
    strength = c.require(row, name, at)
    if not _is_number(strength) or strength != strength:
        raise at.error("wrong-type", f"must be a number from -3 to 3, found {strength!r}", name)
    first, second = ("response1", "response2") if "response1" in row and "response_1" not in row \
        else ("response_1", "response_2")
    prompt = _helpsteer_prompt(row, at)
    for column in (first, second):
        c.response_text(c.require(row, column, at), at, column)
    if strength == 0:
        raise Omitted("tie")
    chosen, rejected = (first, second) if strength < 0 else (second, first)
    return [_named_pair(prompt, row, chosen, rejected, at)]


def align_anything(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """PKU-Alignment/align-anything text-to-text and text-image-to-text: question (and image), response_1,
    response_2 and overall_response or better_response_id (1 or 2, the better response overall; the per-aspect
    columns are not read). The image goes before the question unless the question places it with ``<image>``."""
    question = _prompt_column(row, "question", at)
    if row.get("image") is not None:
        question = images.first_user_image(question)
    name = "overall_response" if "overall_response" in row or "better_response_id" not in row \
        else "better_response_id"
    better = c.require(row, name, at)
    if type(better) is str and better in ("1", "2"):
        better = int(better)
    elif type(better) is float and better in (1.0, 2.0):
        better = int(better)
    if type(better) is not int or better not in (1, 2):
        raise at.error("bad-value", f"must be 1 or 2 (the better response), found {better!r}", name)
    return [_named_pair(question, row, f"response_{better}", f"response_{3 - better}", at)]


# --- llamafactory-v1, openai-dpo ----------------------------------------------------------------------------------

def llamafactory_v1(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """LLaMA-Factory v1 pairs: chosen_messages and rejected_messages, whole conversations of content parts with a
    loss_weight per turn; the shared leading turns are the prompt."""
    raw_chosen, raw_rejected = c.require(row, "chosen_messages", at), c.require(row, "rejected_messages", at)
    names = {"chosen": "chosen_messages", "rejected": "rejected_messages", "prompt": "chosen_messages"}
    try:
        chosen = c.messages(raw_chosen, at, "chosen")
        rejected = c.messages(raw_rejected, at, "rejected")
        pair = c.check_pair(*c.split_implicit(chosen, rejected, at), at)
    except RowError as exc:
        raise _name_fields(exc, at, names) from None
    for name, raw in (("chosen_messages", raw_chosen), ("rejected_messages", raw_rejected)):
        _warn_loss_weights(raw, [len(raw) - 1], at, name, options)
    return [_with_tools(pair, c.tools(row.get("tools"), at))]


def _one_response(value: Any, at: Where, field: str) -> dict:
    if type(value) is list:
        if len(value) != 1:
            raise at.error("bad-value", f"must hold exactly one assistant message (found {len(value)})", field)
        return c.message(value[0], at, f"{field}[0]")
    return c.message(value, at, field)


def openai_dpo(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """OpenAI's (and Azure OpenAI's) DPO fine-tuning rows: ``input: {messages, tools}``, ``preferred_output`` and
    ``non_preferred_output`` (each a list holding one assistant message)."""
    source = c.require(row, "input", at)
    if type(source) is not dict:
        raise at.error("wrong-type", "input must be an object with messages (and optionally tools)", "input")
    try:
        prompt = c.messages(c.require(source, "messages", at, field="input.messages"), at, "input.messages")
        c.check_prompt(prompt, at, "input.messages")
        pair = c.check_pair(prompt, _one_response(c.require(row, "preferred_output", at), at, "chosen"),
                            _one_response(c.require(row, "non_preferred_output", at), at, "rejected"), at)
    except RowError as exc:
        raise _name_fields(exc, at, {"chosen": "preferred_output", "rejected": "non_preferred_output",
                                     "prompt": "input.messages"}) from None
    return [_with_tools(pair, c.tools(source.get("tools"), at, "input.tools"))]


# --- kto, prompt-only, conversation, prompt-completion -----------------------------------------------------------

def _completion(value: Any, at: Where, prompt_is_text: bool) -> str | list[dict[str, str]]:
    if type(value) is str:
        text = c.response_text(value, at, "completion")
        return text if prompt_is_text else [_assistant(text)]
    turns = c.messages(value, at, "completion")
    if prompt_is_text:
        raise at.error("wrong-type", "with a text prompt the completion must be text too", "completion")
    c.check_response(turns[-1], at, "completion")
    return turns


def kto(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """Unpaired rows: prompt, completion and a boolean label (true = desirable); or a whole conversation in
    ``messages`` with a label (LLaMA-Factory's kto_tag), its last turn the completion."""
    label = _label_of(row, at)
    if label is None:
        c.require(row, "label", at)
    tools = c.tools(row.get("tools"), at)
    if "prompt" not in row and "messages" in row:
        turns = c.messages(c.require(row, "messages", at), at, "messages")
        return [_with_tools(_unpaired(turns, label, at, "messages"), tools)]
    prompt = _prompt_value(c.require(row, "prompt", at), at)
    completion = _completion(c.require(row, "completion", at), at, type(prompt) is str)
    return [_with_tools({"prompt": prompt, "completion": completion, "label": label}, tools)]


def prompt_only(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """A prompt (text or messages), or ``messages`` ending on a user turn, for online methods (GRPO, RLOO, online
    DPO, PPO); extra columns travel with it."""
    field = "messages" if "prompt" not in row and "messages" in row else "prompt"
    prompt = _prompt_value(c.require(row, field, at), at, field)
    return [_with_tools({"prompt": prompt}, c.tools(row.get("tools"), at))]


def conversation(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """A whole conversation in ``messages`` (supervised fine-tuning data), tool calls and content parts included."""
    raw = c.require(row, "messages", at)
    turns = c.messages(raw, at, "messages")
    _warn_loss_weights(raw, [i for i, turn in enumerate(turns) if turn["role"] == ASSISTANT], at, "messages", options)
    return [_with_tools(_conversation(turns, at, "messages"), c.tools(row.get("tools"), at))]


def prompt_completion(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """A prompt and one completion without a label (supervised fine-tuning data)."""
    prompt = _prompt_value(c.require(row, "prompt", at), at)
    completion = _completion(c.require(row, "completion", at), at, type(prompt) is str)
    return [_with_tools({"prompt": prompt, "completion": completion}, c.tools(row.get("tools"), at))]


# --- registry and detection --------------------------------------------------------------------------------------

def _is_messages(value: Any) -> bool:
    return type(value) is list and bool(value) and type(value[0]) is dict and "role" in value[0]


def _is_hh(value: Any) -> bool:
    return type(value) is str and ("\n\nHuman:" in value or value.startswith("Human:")) and "Assistant:" in value


def _detect_trl(row: dict) -> bool:
    if "chosen" not in row or "rejected" not in row:
        return False
    chosen, prompt = row["chosen"], row.get("prompt")
    if type(chosen) is str:
        return type(prompt) is str and not _is_hh(chosen)
    if not _is_messages(chosen):
        return False
    # implicit prompt, or an explicit prompt list with the response alone in chosen
    return prompt is None or (type(prompt) is list and chosen[0].get("role") == ASSISTANT)


def _detect_messages(row: dict) -> bool:
    if not (_is_messages(row.get("chosen")) and _is_messages(row.get("rejected"))):
        return False
    prompt = row.get("prompt")
    return type(prompt) is str or (type(prompt) is list and row["chosen"][0].get("role") != ASSISTANT)


LABELS = ("label", "kto_tag")
PAIR_KEYS = ("chosen", "rejected", "response_0", "response_1", "response1", "responses", "answers", "chosen_response",
             "completion", "messages", "conversations", "chosen_messages", "preferred_output", *LABELS)


def _detect_kto(row: dict) -> bool:
    return any(k in row for k in LABELS) and (("prompt" in row and "completion" in row)
                                             or ("prompt" not in row and _is_messages(row.get("messages"))))


def _ends_with_user(row: dict) -> bool:
    """``messages`` that stop on a user turn: a prompt waiting for an answer, not a conversation to imitate."""
    messages = row.get("messages")
    return _is_messages(messages) and type(messages[-1]) is dict and messages[-1].get("role") == USER


def _detect_prompt_only(row: dict) -> bool:
    if "prompt" in row:
        return not any(k in row for k in PAIR_KEYS)
    return _ends_with_user(row) and not any(k in row for k in PAIR_KEYS if k != "messages")


def _detect_conversation(row: dict) -> bool:
    return (_is_messages(row.get("messages")) and not _ends_with_user(row)
            and not any(k in row for k in ("chosen", "prompt", *LABELS)))


@dataclass(frozen=True)
class Format:
    name: str
    adapter: Callable[[dict, Where, AdapterOptions], list[dict]]
    detect: Callable[[dict], bool]
    columns: frozenset[str]  # the columns the adapter reads; the rest are extra
    description: str = ""
    keeps_extra: bool = False


def _has(*names: str) -> Callable[[dict], bool]:
    return lambda row: all(n in row for n in names)


def _imaged(adapter: Callable[[dict, Where, AdapterOptions], list[dict]], column: str = images.MANY):
    """The adapter, reading rows with images too: image parts become ``<image>`` placeholders for the text checks,
    the images are resolved (relative paths from the data file's folder, or the registry's) and checked to decode,
    and each example becomes TRL's vision layout with its ``images``. Rows without images take the text path."""
    def adapt(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
        if not images.has_images(row, column):
            return adapter(row, at, options)
        base = Path(options.media_dir) if options.media_dir else Path(at.file).parent
        refs = images.references(row, base, at)
        field = column if column == images.ONE or row.get(images.MANY) is None else images.MANY
        return [images.vision(example, refs, at, field)
                for example in adapter(images.with_placeholders(row, at), at, options)]

    adapt.__doc__ = adapter.__doc__
    adapt.__name__ = adapter.__name__
    return adapt


IMAGES = frozenset({images.MANY})  # the image column every message format reads


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("trl", _imaged(trl), _detect_trl,
           frozenset({"prompt", "chosen", "rejected", "tools", *SCORE_NAMES, *IMAGES}),
           "TRL's own rows: prompt/chosen/rejected as strings or messages, explicit or implicit prompt (full "
           "multi-turn conversations such as Capybara-Preferences split at the last turn), images with "
           "{\"type\": \"image\"} content parts (TRL's vision layout); equal scores "
           "(score_chosen/score_rejected, chosen_rating/rejected_rating, ...) are a tie, left out"),
    Format("messages", _imaged(messages), _detect_messages,
           frozenset({"prompt", "chosen", "rejected", "messages", "tools", *SCORE_NAMES, *IMAGES}),
           "full OpenAI-style conversations in chosen/rejected, optional prompt (DPO-En-Zh-20k, UltraFeedback "
           "binarized); equal scores (score_chosen/score_rejected, chosen-rating/rejected-rating, ...) are a tie, "
           "left out"),
    Format("alpaca", _imaged(alpaca),
           lambda row: "instruction" in row and (("chosen" in row and "rejected" in row) or "output" in row),
           frozenset({"instruction", "input", "chosen", "rejected", "output", "system", "history", "tools",
                      *LABELS, *IMAGES}),
           "instruction, input, optional system and history, then chosen/rejected (pairs) or output (SFT; KTO "
           "with a label) (LLaMA-Factory alpaca)"),
    Format("sharegpt", _imaged(sharegpt), lambda row: "conversations" in row,
           frozenset({"conversations", "chosen", "rejected", "system", "tools", *LABELS, *IMAGES}),
           "conversations (from/value, function_call and observation turns), optional system and tools, plus "
           "chosen/rejected (pairs), a kto_tag (KTO) or neither (SFT), images with <image> placeholders "
           "(LLaMA-Factory sharegpt and mllm)"),
    Format("hh-rlhf", hh_rlhf,
           lambda row: "prompt" not in row and _is_hh(row.get("chosen")) and _is_hh(row.get("rejected")),
           frozenset({"chosen", "rejected"}), "Human:/Assistant: transcripts in chosen and rejected (Anthropic HH)"),
    Format("pku-saferlhf", pku_saferlhf,
           lambda row: all(k in row for k in ("prompt", "response_0", "response_1"))
           and ("better_response_id" in row or "safer_response_id" in row),
           frozenset({"prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
                      "is_response_0_safe", "is_response_1_safe"}),
           "prompt, response_0, response_1, better_response_id, safer_response_id (PKU-SafeRLHF)"),
    Format("orca-dpo", orca_dpo,
           lambda row: ("question" in row or ("input" in row and "instruction" not in row))
           and "chosen" in row and "rejected" in row and "image" not in row,
           frozenset({"system", "question", "input", "chosen", "rejected", "status"}),
           "system, question (or input), chosen, rejected (Intel/orca_dpo_pairs, argilla's distilabel copy: "
           "status tie is left out)"),
    Format("ranked", ranked, lambda row: "prompt" in row and "responses" in row and ("scores" in row
                                                                                     or "ranks" in row),
           frozenset({"prompt", "responses", "scores", "ranks"}),
           "prompt, responses and their scores or ranks; --pairs chooses which pairs (best against worst by "
           "default); all responses scored the same are a tie, left out"),
    Format("nectar", nectar, lambda row: "prompt" in row and "answers" in row,
           frozenset({"prompt", "answers"}),
           "a Human:/Assistant: transcript prompt and answers ({answer, model, rank}, 1 the best) (Nectar); --pairs "
           "chooses which pairs: by default the best-ranked answer against the worst-ranked"),
    Format("argilla", argilla, _has("chosen_response", "rejected_response"),
           frozenset({"instruction", "prompt", "chosen_response", "rejected_response", *SCORE_NAMES}),
           "instruction, chosen_response, rejected_response and their ratings (argilla's "
           "ultrafeedback-binarized-preferences); equal ratings are a tie, left out"),
    Format("shp", shp, _has("human_ref_A", "human_ref_B"),
           frozenset({"history", "human_ref_A", "human_ref_B", "labels"}),
           "history, human_ref_A, human_ref_B, labels (1: A preferred, 0: B) (Stanford Human Preferences); the "
           "scores are not read"),
    Format("helpsteer", helpsteer,
           lambda row: (_has("response_1", "response_2")(row) or _has("response1", "response2")(row))
           and ("preference_strength" in row or "overall_preference" in row),
           frozenset({"prompt", "context", "response_1", "response_2", "response1", "response2",
                      "preference_strength", "overall_preference"}),
           "prompt, response_1, response_2, preference_strength (HelpSteer2) or context, response1, response2, "
           "overall_preference (HelpSteer3): below 0 the first response is preferred, above 0 the second, 0 is a "
           "tie, left out"),
    Format("rlaif-v", _imaged(rlaif_v, images.ONE), _has("image", "question", "chosen", "rejected"),
           frozenset({"image", "question", "chosen", "rejected", "ds_name", "origin_dataset", "origin_split", "idx",
                      "image_path"}),
           "image, question, chosen, rejected (openbmb/RLAIF-V-Dataset; ds_name, origin_dataset, origin_split, idx "
           "and image_path are metadata)"),
    Format("align-anything", _imaged(align_anything, images.ONE),
           lambda row: _has("question", "response_1", "response_2")(row)
           and ("overall_response" in row or "better_response_id" in row),
           frozenset({"question", "image", "response_1", "response_2", "overall_response", "better_response_id"}),
           "question, response_1, response_2, overall_response or better_response_id (1 or 2), and an image for "
           "text-image-to-text (Align-Anything)"),
    Format("llamafactory-v1", llamafactory_v1, _has("chosen_messages", "rejected_messages"),
           frozenset({"chosen_messages", "rejected_messages", "tools"}),
           "chosen_messages and rejected_messages, content parts and loss_weight per turn (LLaMA-Factory v1)"),
    Format("openai-dpo", openai_dpo, _has("preferred_output", "non_preferred_output"),
           frozenset({"input", "preferred_output", "non_preferred_output"}),
           "input.messages, preferred_output, non_preferred_output (OpenAI and Azure OpenAI DPO fine-tuning)"),
    Format("kto", _imaged(kto), _detect_kto, frozenset({"prompt", "completion", "messages", "tools", *LABELS,
                                                       *IMAGES}),
           "unpaired prompt, completion, label (true = desirable); or messages with a label or kto_tag"),
    Format("prompt-only", _imaged(prompt_only), _detect_prompt_only,
           frozenset({"prompt", "messages", "tools", *IMAGES}),
           "a prompt (text or messages), or messages ending on a user turn, with extra columns kept, for GRPO, "
           "RLOO, online DPO and PPO", keeps_extra=True),
    Format("conversation", _imaged(conversation), _detect_conversation, frozenset({"messages", "tools", *IMAGES}),
           "whole conversations in messages, tool calls and content parts included, images with <image> "
           "placeholders or image parts (SFT data; LLaMA-Factory mllm, TRL vision)"),
    Format("prompt-completion", _imaged(prompt_completion),
           lambda row: "prompt" in row and "completion" in row and not any(k in row for k in LABELS),
           frozenset({"prompt", "completion", "tools", *IMAGES}), "prompt and completion without a label (SFT data)"),
)}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown format '{name}'{did_you_mean(name, FORMATS)}") from None


def candidates(row: dict) -> list[str]:
    """The formats whose signature this row matches (detection never raises on odd rows)."""
    found = []
    for fmt in FORMATS.values():
        try:
            if fmt.detect(row):
                found.append(fmt.name)
        except Exception:  # a detector meeting an odd value simply does not match
            continue
    return found


def _wrong_values(row: dict, file: str, line: int) -> RowError | None:
    """Why a row that no format fits is not read by the format whose columns it has (TRL's own names after a
    rename, say): that format's adapter names the field and what is wrong with its value."""
    names = row.keys() - {"tools", "system"}
    if len(names) < 2:
        return None
    overlap = {name: len(names & fmt.columns) for name, fmt in FORMATS.items() if names <= fmt.columns}
    for name in sorted(overlap, key=lambda n: -overlap[n]):  # stable: FORMATS order breaks ties
        try:
            FORMATS[name].adapter(row, Where(file, line), AdapterOptions())
        except RowError as exc:
            return RowError(exc.check, f"the row has format {name}'s columns, but: {exc.reason}", file=file,
                            line=line, field=exc.field)
        except Exception:  # the adapter found nothing wrong it can name
            continue
    return None


def detect(row: dict, file: str, line: int, format_option: str = "--format",
           rename_option: str = "--map prompt=COLUMN") -> Format:
    """The one format this row's columns fit; none or several is an error that says what to do, in the words of
    where the data was named (convert-data's flags by default, a recipe source's keys under train)."""
    found = candidates(row)
    if len(found) == 1:
        return FORMATS[found[0]]
    columns = ", ".join(sorted(map(str, row))) or "none"
    if not found:
        raise _wrong_values(row, file, line) or DataError(
            f"cannot tell the data format from the columns ({columns}); name it with {format_option} "
            f"({', '.join(FORMATS)}) or rename columns with {rename_option}", file=file, line=line)
    raise DataError(f"the columns ({columns}) fit several formats: {', '.join(found)}; choose one with "
                    f"{format_option}", file=file, line=line)
