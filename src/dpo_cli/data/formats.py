"""Format adapters: small pure functions from one raw row to canonical examples, registered by name, with detection.

An adapter returns a list of canonical examples (usually one; ``ranked`` may make several pairs), each one of:

- a pair ``{"prompt", "chosen", "rejected"}`` (conversational: prompt turns, one assistant message each; or the
  standard form: three strings),
- an unpaired example ``{"prompt", "completion", "label"}``,
- a prompt-only example ``{"prompt"}``,
- a conversation ``{"messages"}``, or a prompt-completion example ``{"prompt", "completion"}``.

Every failure is a RowError (a DataError) naming the file, line and field; an adapter never returns None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.data import checks as c
from dpo_cli.data.checks import RowError, Where


@dataclass
class AdapterOptions:
    """Choices some formats need: which PKU-SafeRLHF id decides, how ranked responses become pairs."""

    preference: str = "better"  # pku-saferlhf: better | safer
    pairs: str = "best-worst"  # ranked: best-worst | all | threshold=X
    warn: Callable[[RowError], None] | None = None  # rows that convert but deserve a mention

    def __post_init__(self) -> None:
        if self.preference not in ("better", "safer"):
            raise DataError(f"--preference must be 'better' or 'safer', not {self.preference!r}")
        self.threshold = None
        if self.pairs.startswith("threshold="):
            try:
                self.threshold = float(self.pairs.split("=", 1)[1])
            except ValueError:
                raise DataError(f"--pairs threshold=X needs a number, got {self.pairs!r}") from None
        elif self.pairs not in ("best-worst", "all"):
            raise DataError(f"--pairs must be best-worst, all or threshold=X, not {self.pairs!r}")


USER, ASSISTANT, SYSTEM = "user", "assistant", "system"


def _user(content: str) -> dict[str, str]:
    return {"role": USER, "content": content}


def _assistant(content: str) -> dict[str, str]:
    return {"role": ASSISTANT, "content": content}


def _system_prefix(row: dict, at: Where, name: str = "system") -> list[dict[str, str]]:
    system = row.get(name)
    if system is None or system == "":
        return []
    return [{"role": SYSTEM, "content": c.text(system, at, name)}]


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
    if chosen == rejected:
        raise at.error("identical", "chosen and rejected are identical", "rejected")
    if type(prompt) is str:
        return {"prompt": [_user(prompt)], "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}
    return {"prompt": prompt, "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}


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
        if chosen == rejected:
            raise at.error("identical", "chosen and rejected are identical", "rejected")
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    chosen_turns = c.messages(chosen, at, "chosen")
    rejected_turns = c.messages(rejected, at, "rejected")
    if prompt is None:
        prompt_turns, chosen_turn, rejected_turn = c.split_implicit(chosen_turns, rejected_turns, at)
    else:
        if type(prompt) is not list:
            raise at.error("wrong-type", "with conversational chosen/rejected the prompt must be a list of "
                           "messages (for a text prompt beside full conversations use --format messages)",
                           "prompt")
        prompt_turns = c.messages(prompt, at, "prompt")
        for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
            if len(turns) != 1:
                raise at.error("bad-value", f"with an explicit prompt, {name} must be one assistant message "
                               f"(found {len(turns)}; for full conversations use --format messages)", name)
        chosen_turn, rejected_turn = chosen_turns[0], rejected_turns[0]
    return [_with_tools(c.check_pair(prompt_turns, chosen_turn, rejected_turn, at), row)]


def _with_tools(pair: dict, row: dict) -> dict:
    if "tools" in row:  # TRL's DPO hands a tools column to the chat template
        pair["tools"] = row["tools"]
    return pair


# --- messages (OpenAI-style full conversations; DPO-En-Zh-20k, UltraFeedback-binarized) -----------------------------

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
    if "score_chosen" in row and "score_rejected" in row and options.warn is not None:
        sc, sr = row["score_chosen"], row["score_rejected"]
        if _is_number(sc) and _is_number(sr) and sc <= sr:
            options.warn(at.error("score-order", f"score_chosen {sc} is not above score_rejected {sr}",
                                  "score_chosen"))
    return [_with_tools(c.check_pair(prompt_turns, chosen_turn, rejected_turn, at), row)]


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# --- alpaca ------------------------------------------------------------------------------------------------------

def alpaca(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """instruction, input, chosen, rejected, optional system and history; or ranked ``output: [chosen, rejected]``."""
    # The common row, checked inline (this adapter is the benchmark's hot path); anything else, valid or not, takes
    # the full path below, which gives the same result or the precise error.
    instruction, extra = row.get("instruction"), row.get("input")
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if (type(instruction) is str and type(chosen) is str and type(rejected) is str
            and (extra is None or type(extra) is str) and "system" not in row and "history" not in row):
        user = f"{instruction}\n{extra}" if extra else instruction
        if (user and not user.isspace() and chosen and not chosen.isspace() and rejected
                and not rejected.isspace() and chosen != rejected):
            return [{"prompt": [{"role": USER, "content": user}], "chosen": [{"role": ASSISTANT, "content": chosen}],
                     "rejected": [{"role": ASSISTANT, "content": rejected}]}]
    return _alpaca_checked(row, at)


def _alpaca_checked(row: dict, at: Where) -> list[dict]:
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
    if "chosen" in row or "rejected" in row or "output" not in row:
        chosen, rejected = c.require(row, "chosen", at), c.require(row, "rejected", at)
    else:
        output = row["output"]
        if type(output) is not list or len(output) != 2:
            raise at.error("wrong-type", "output must be a list [chosen, rejected] for preference data", "output")
        chosen, rejected = output
    return [_pair(prompt, chosen, rejected, at)]


# --- sharegpt ----------------------------------------------------------------------------------------------------

SHAREGPT_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM,
                  "observation": "tool", "tool": "tool", "function_call": ASSISTANT}


def _sharegpt_message(value: Any, at: Where, field: str) -> dict[str, str]:
    if type(value) is str:
        return _assistant(value)
    if type(value) is not dict:
        raise at.error("wrong-type", "expected a message object ({from, value} or {role, content})", field)
    if "from" in value or "value" in value:
        tag, content = value.get("from"), value.get("value")
        tag_name, content_name = "from", "value"
    else:
        tag, content = value.get("role"), value.get("content")
        tag_name, content_name = "role", "content"
    if tag is None:
        raise at.error("missing-field", f"message has no '{tag_name}'", field)
    role = SHAREGPT_ROLES.get(tag) if type(tag) is str else None
    if role is None:
        raise at.error("bad-role", f"unknown {tag_name} {tag!r} (expected one of "
                       f"{', '.join(sorted(SHAREGPT_ROLES))})", field)
    if content is None:
        raise at.error("missing-field", f"message has no '{content_name}'", field)
    if type(content) is not str:
        raise at.error("wrong-type", f"message {content_name} must be text", field)
    return {"role": role, "content": content}


def sharegpt(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """conversations (from/value or role/content) plus one chosen and one rejected message (LLaMA-Factory ranking)."""
    conversation = c.require(row, "conversations", at)
    if type(conversation) is not list or not conversation:
        raise at.error("wrong-type", "conversations must be a non-empty list of messages", "conversations")
    turns = [_sharegpt_message(m, at, f"conversations[{i}]") for i, m in enumerate(conversation)]
    prompt = turns if turns[0]["role"] == SYSTEM else _system_prefix(row, at) + turns
    c.check_prompt(prompt, at, "conversations")
    chosen = _sharegpt_message(c.require(row, "chosen", at), at, "chosen")
    rejected = _sharegpt_message(c.require(row, "rejected", at), at, "rejected")
    return [_with_tools(c.check_pair(prompt, chosen, rejected, at), row)]


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
    """prompt, response_0, response_1 and better_response_id / safer_response_id (0 or 1)."""
    prompt = _prompt_value(c.require(row, "prompt", at), at)
    key = f"{options.preference}_response_id"
    choice = c.require(row, key, at)
    if type(choice) is str and choice in ("0", "1"):
        choice = int(choice)
    if type(choice) is not int or choice not in (0, 1):
        raise at.error("bad-value", f"must be 0 or 1, found {choice!r}", key)
    responses = (c.require(row, "response_0", at), c.require(row, "response_1", at))
    chosen, rejected = responses[choice], responses[1 - choice]
    at_chosen = f"response_{choice}"
    try:
        return [_pair(prompt, chosen, rejected, at)]
    except RowError as exc:  # name the source column, not the canonical one
        if exc.field in ("chosen", "rejected"):
            exc = at.error(exc.check, exc.reason, at_chosen if exc.field == "chosen" else f"response_{1 - choice}")
        raise exc from None


# --- orca-dpo ----------------------------------------------------------------------------------------------------

def orca_dpo(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """system, question, chosen, rejected (Intel/orca_dpo_pairs)."""
    question = c.text(c.require(row, "question", at), at, "question")
    if not question.strip():
        raise at.error("empty-prompt", "question is empty or whitespace only", "question")
    prompt = _system_prefix(row, at) + [_user(question)]
    return [_pair(prompt, c.require(row, "chosen", at), c.require(row, "rejected", at), at)]


# --- ranked ------------------------------------------------------------------------------------------------------

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
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    pairs: list[tuple[int, int]] = []
    if options.pairs == "best-worst":
        best, worst = order[0], order[-1]
        if scores[best] == scores[worst]:
            raise at.error("bad-value", "all responses have the same score, so none is preferred", name)
        pairs.append((best, worst))
    else:
        margin = options.threshold if options.threshold is not None else 0.0
        for i in order:
            for j in order:
                if scores[i] > scores[j] and scores[i] - scores[j] >= margin:
                    pairs.append((i, j))
    examples = []
    for i, j in pairs:
        if texts[i] == texts[j]:
            continue  # the same text under two scores gives no preference signal
        examples.append(_pair(prompt, texts[i], texts[j], at))
    return examples


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
    """Unpaired rows: prompt, completion and a boolean label (true = desirable)."""
    prompt = _prompt_value(c.require(row, "prompt", at), at)
    completion = _completion(c.require(row, "completion", at), at, type(prompt) is str)
    label = c.require(row, "label", at)
    if type(label) is not bool:
        if label in (0, 1) and type(label) is int:
            label = bool(label)
        elif type(label) is str and label.lower() in ("true", "false"):
            label = label.lower() == "true"
        else:
            raise at.error("wrong-type", f"label must be true or false, found {label!r}", "label")
    return [{"prompt": prompt, "completion": completion, "label": label}]


def prompt_only(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """A prompt (text or messages) for online methods (GRPO, PPO); extra columns travel with it."""
    return [{"prompt": _prompt_value(c.require(row, "prompt", at), at)}]


def conversation(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """A whole conversation in ``messages`` (supervised fine-tuning data)."""
    turns = c.messages(c.require(row, "messages", at), at, "messages")
    c.check_order(turns, at, "messages")
    c.check_response(turns[-1], at, "messages")
    return [{"messages": turns}]


def prompt_completion(row: dict, at: Where, options: AdapterOptions) -> list[dict]:
    """A prompt and one completion without a label (supervised fine-tuning data)."""
    prompt = _prompt_value(c.require(row, "prompt", at), at)
    return [{"prompt": prompt, "completion": _completion(c.require(row, "completion", at), at,
                                                          type(prompt) is str)}]


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


@dataclass(frozen=True)
class Format:
    name: str
    adapter: Callable[[dict, Where, AdapterOptions], list[dict]]
    detect: Callable[[dict], bool]
    columns: frozenset[str]  # the columns the adapter reads; the rest are extra
    description: str = ""
    shape: str = "pair"  # what its examples are: pair, unpaired, prompt, conversation, prompt-completion
    keeps_extra: bool = False


def _has(*names: str) -> Callable[[dict], bool]:
    return lambda row: all(n in row for n in names)


PAIR_KEYS = ("chosen", "rejected", "response_0", "responses", "completion", "messages", "conversations")

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("trl", trl, _detect_trl, frozenset({"prompt", "chosen", "rejected", "tools"}),
           "TRL's own rows: prompt/chosen/rejected as strings or messages, explicit or implicit prompt"),
    Format("messages", messages, _detect_messages,
           frozenset({"prompt", "chosen", "rejected", "messages", "score_chosen", "score_rejected", "tools"}),
           "full OpenAI-style conversations in chosen/rejected, optional prompt (DPO-En-Zh-20k, UltraFeedback)"),
    Format("alpaca", alpaca,
           lambda row: "instruction" in row and (("chosen" in row and "rejected" in row) or "output" in row),
           frozenset({"instruction", "input", "chosen", "rejected", "output", "system", "history"}),
           "instruction, input, chosen, rejected, optional system and history (LLaMA-Factory alpaca)"),
    Format("sharegpt", sharegpt, _has("conversations", "chosen", "rejected"),
           frozenset({"conversations", "chosen", "rejected", "system", "tools"}),
           "conversations + one chosen and one rejected message (LLaMA-Factory sharegpt ranking)"),
    Format("hh-rlhf", hh_rlhf,
           lambda row: "prompt" not in row and _is_hh(row.get("chosen")) and _is_hh(row.get("rejected")),
           frozenset({"chosen", "rejected"}), "Human:/Assistant: transcripts in chosen and rejected (Anthropic HH)"),
    Format("pku-saferlhf", pku_saferlhf,
           lambda row: all(k in row for k in ("prompt", "response_0", "response_1"))
           and ("better_response_id" in row or "safer_response_id" in row),
           frozenset({"prompt", "response_0", "response_1", "better_response_id", "safer_response_id"}),
           "prompt, response_0, response_1, better_response_id, safer_response_id (PKU-SafeRLHF)"),
    Format("orca-dpo", orca_dpo, _has("question", "chosen", "rejected"),
           frozenset({"system", "question", "chosen", "rejected"}), "system, question, chosen, rejected"),
    Format("ranked", ranked, lambda row: "prompt" in row and "responses" in row and ("scores" in row
                                                                                     or "ranks" in row),
           frozenset({"prompt", "responses", "scores", "ranks"}),
           "prompt, responses and their scores or ranks; --pairs chooses which pairs"),
    Format("kto", kto, _has("prompt", "completion", "label"), frozenset({"prompt", "completion", "label"}),
           "unpaired prompt, completion, label (true = desirable)", shape="unpaired"),
    Format("prompt-only", prompt_only,
           lambda row: "prompt" in row and not any(k in row for k in PAIR_KEYS),
           frozenset({"prompt"}), "a prompt (text or messages) with extra columns kept, for GRPO and PPO",
           shape="prompt", keeps_extra=True),
    Format("conversation", conversation,
           lambda row: _is_messages(row.get("messages")) and not any(k in row for k in ("chosen", "prompt")),
           frozenset({"messages"}), "whole conversations in messages (SFT data)", shape="conversation"),
    Format("prompt-completion", prompt_completion,
           lambda row: "prompt" in row and "completion" in row and "label" not in row,
           frozenset({"prompt", "completion"}), "prompt and completion without a label (SFT data)",
           shape="prompt-completion"),
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


def detect(row: dict, file: str, line: int) -> Format:
    """The one format this row's columns fit; none or several is an error that says what to do."""
    found = candidates(row)
    if len(found) == 1:
        return FORMATS[found[0]]
    columns = ", ".join(sorted(map(str, row))) or "none"
    if not found:
        raise DataError(f"cannot tell the data format from the columns ({columns}); name it with --format "
                        f"({', '.join(FORMATS)}) or rename columns with --map prompt=COLUMN", file=file, line=line)
    raise DataError(f"the columns ({columns}) fit several formats: {', '.join(found)}; choose one with --format",
                    file=file, line=line)
