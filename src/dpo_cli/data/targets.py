"""Output shapes: canonical examples -> the rows a stage or a --to option asks for (TRL, text, alpaca, ...)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dpo_cli.data.checks import Omitted, Where
from dpo_cli.data.images import text_of


def shape_of(example: dict) -> str:
    if "chosen" in example:
        return "pair"
    if "label" in example:
        return "unpaired"
    if "messages" in example:
        return "conversation"
    if "completion" in example:
        return "prompt-completion"
    return "prompt"


SHAPE_WORDS = {"pair": "preference pairs", "unpaired": "unpaired (KTO) rows", "conversation": "conversations",
               "prompt-completion": "prompt-completion rows", "prompt": "prompt-only rows"}


def _cannot(example: dict, target: str, at: Where, hint: str = ""):
    return at.error("mixed-format", f"the row holds {SHAPE_WORDS[shape_of(example)]}, which cannot become "
                    f"{target}{hint}", None)


def _with_tools(out: dict, example: dict) -> dict:
    """The new row, with the example's tools and images (their placeholders stay in the prompt turns it keeps)."""
    if "tools" in example:
        out["tools"] = example["tools"]
    if "images" in example:
        out["images"] = example["images"]
    return out


def _no_images(example: dict, at: Where, target: str) -> None:
    if "images" in example:
        raise at.error("bad-value", f"{target} has no place for images; use --to sharegpt or the default output",
                       "images")


def _imitated(example: dict) -> tuple[Any, Any] | None:
    """(prompt, completion) an SFT run imitates: the chosen side of a pair, a desirable KTO row, a prompt-completion
    row; None for a conversation. An undesirable KTO row is left out and counted, never imitated."""
    if "chosen" in example:
        return example["prompt"], example["chosen"]
    if "label" in example:
        if not example["label"]:
            raise Omitted("undesirable")
        return example["prompt"], example["completion"]
    if "completion" in example:
        return example["prompt"], example["completion"]
    return None


def to_trl(example: dict, at: Where) -> list[dict]:
    """TRL's own row of whatever type the data holds: pairs, unpaired, conversations, prompt-completion, prompts."""
    return [example]


def to_pairs(example: dict, at: Where) -> list[dict]:
    if "chosen" not in example:
        raise _cannot(example, "preference pairs", at)
    return [example]


def to_kto(example: dict, at: Where) -> list[dict]:
    if "chosen" in example:
        prompt = example["prompt"]
        return [_with_tools({"prompt": prompt, "completion": example["chosen"], "label": True}, example),
                _with_tools({"prompt": prompt, "completion": example["rejected"], "label": False}, example)]
    if "label" in example:
        return [example]
    raise _cannot(example, "unpaired (KTO) rows", at)


def to_prompt(example: dict, at: Where) -> list[dict]:
    if "messages" in example:
        turns = example["messages"]
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=-1)
        if last_user < 0:
            raise at.error("bad-role", "the conversation has no user turn to use as a prompt", "messages")
        return [_with_tools({"prompt": turns[:last_user + 1]}, example)]
    return [_with_tools({"prompt": example["prompt"]}, example)]


def to_prompt_one_image(example: dict, at: Where) -> list[dict]:
    """Prompt-only rows for a trainer that takes one image with each prompt, as an ``image`` column (TRL's
    OnlineDPOTrainer): a row with images holds exactly one; more, or none among rows with images, is the row's error
    rather than a crash mid-run."""
    found = example.get("images")
    if found is None:
        return to_prompt(example, at)
    if len(found) != 1:
        raise at.error("image-count", f"the row has {len(found)} images, but TRL's OnlineDPOTrainer takes exactly one "
                       f"image with each prompt", "images")
    return [{**{k: v for k, v in row.items() if k != "images"}, "image": found[0]} for row in to_prompt(example, at)]


def to_sft(example: dict, at: Where) -> list[dict]:
    """What an SFT stage reads: conversations, or prompt-completion text for plain-text data."""
    if "messages" in example:
        return [example]
    imitated = _imitated(example)
    if imitated is None:
        raise _cannot(example, "supervised (SFT) rows: there is no response to learn", at)
    prompt, completion = imitated
    if type(prompt) is str:
        return [_with_tools({"prompt": prompt, "completion": completion}, example)]
    return [_with_tools({"messages": prompt + completion}, example)]


def to_messages(example: dict, at: Where) -> list[dict]:
    """Whole conversations (TRL's conversational language-modelling rows)."""
    if "messages" in example:
        return [example]
    imitated = _imitated(example)
    if imitated is None:
        raise _cannot(example, "conversations: there is no response", at)
    prompt, completion = imitated
    if type(prompt) is str:
        raise at.error("wrong-type", "plain-text rows have no turns to make a conversation of; use "
                       "--to prompt-completion", "prompt")
    return [_with_tools({"messages": prompt + completion}, example)]


def to_prompt_completion(example: dict, at: Where) -> list[dict]:
    """A prompt and the completion to learn: a conversation splits before its last (assistant) turn."""
    if "messages" in example:
        turns = example["messages"]
        return [_with_tools({"prompt": turns[:-1], "completion": turns[-1:]}, example)]
    imitated = _imitated(example)
    if imitated is None:
        raise _cannot(example, "prompt-completion rows: there is no response", at)
    return [_with_tools({"prompt": imitated[0], "completion": imitated[1]}, example)]


def _single_user(prompt: Any, at: Where, target: str) -> str:
    if type(prompt) is str:
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    raise at.error("bad-value", f"the prompt has a system message or earlier turns, which {target} cannot hold; "
                   f"keep the default conversational output", "prompt")


def _text_only(turn: dict, at: Where, target: str, field: str) -> str:
    """The text of a turn a text-only layout will hold; tool calls or reasoning would be lost, so they are refused."""
    for key in ("tool_calls", "reasoning_content"):
        if key in turn:
            raise at.error("bad-value", f"{target} has no place for {key}; keep the default output", field)
    return turn["content"]


def _response(value: Any, at: Where, target: str, field: str) -> str:
    return value if type(value) is str else _text_only(value[-1], at, target, field)


def to_text(example: dict, at: Where) -> list[dict]:
    if "chosen" not in example:
        raise _cannot(example, "plain-text preference pairs", at)
    _no_images(example, at, "plain text")
    return [{"prompt": _single_user(example["prompt"], at, "plain text"),
             "chosen": _response(example["chosen"], at, "plain text", "chosen"),
             "rejected": _response(example["rejected"], at, "plain text", "rejected")}]


def to_alpaca(example: dict, at: Where) -> list[dict]:
    """alpaca with system and history; the last user turn is the instruction, input stays empty. Pairs get
    chosen/rejected, conversations an output."""
    if "chosen" in example:
        turns, responses = example["prompt"], {"chosen": example["chosen"], "rejected": example["rejected"]}
    elif "messages" in example:
        turns, responses = example["messages"][:-1], {"output": example["messages"][-1:]}
    else:
        raise _cannot(example, "alpaca rows", at, " (alpaca holds pairs and conversations)")
    _no_images(example, at, "alpaca")
    if "tools" in example:
        raise at.error("bad-value", "alpaca has no place for tools; use --to sharegpt or the default output", "tools")
    out: dict[str, Any] = {}
    if type(turns) is str:
        out["instruction"] = turns
    else:
        turns = list(turns)
        if turns[0]["role"] == "system":
            out["system"] = turns.pop(0)["content"]
        history = []
        for i in range(0, len(turns) - 1, 2):
            user, assistant = turns[i], turns[i + 1]
            if user["role"] != "user" or assistant["role"] != "assistant":
                raise at.error("bad-value", "alpaca history holds only user/assistant pairs; this prompt has "
                               f"a {assistant['role'] if user['role'] == 'user' else user['role']} turn", "prompt")
            history.append([user["content"], _text_only(assistant, at, "alpaca", "prompt")])
        if turns[-1]["role"] != "user":
            raise at.error("bad-value", "alpaca needs the prompt to end with a user turn", "prompt")
        out["instruction"] = turns[-1]["content"]
        if history:
            out["history"] = history
    out["input"] = ""
    for name, value in responses.items():
        out[name] = _response(value, at, "alpaca", name)
    return [out]


_SHAREGPT_TAGS = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}


def _sharegpt_turn(turn: dict, at: Where, field: str) -> dict:
    """One canonical turn as LLaMA-Factory's ShareGPT: a tool call becomes a function_call turn whose value is the
    call as JSON (a list for parallel calls)."""
    if "reasoning_content" in turn:
        raise at.error("bad-value", "sharegpt has no place for reasoning_content; keep the default output", field)
    calls = turn.get("tool_calls")
    if not calls:  # vision content parts go back to text with LLaMA-Factory's <image> placeholders
        return {"from": _SHAREGPT_TAGS[turn["role"]], "value": text_of(turn["content"])}
    if turn["content"]:
        raise at.error("bad-value", "sharegpt cannot hold text and a tool call in one turn; keep the default "
                       "output", field)
    functions = [call["function"] for call in calls]
    return {"from": "function_call",
            "value": json.dumps(functions[0] if len(functions) == 1 else functions, ensure_ascii=False)}


def to_sharegpt(example: dict, at: Where) -> list[dict]:
    if "chosen" in example:
        prompt, ends = example["prompt"], {"chosen": example["chosen"], "rejected": example["rejected"]}
    elif "messages" in example:
        prompt, ends = example["messages"], {}
    else:
        raise _cannot(example, "sharegpt rows", at, " (sharegpt here holds pairs and conversations)")
    out: dict[str, Any] = {}
    turns = [{"role": "user", "content": prompt}] if type(prompt) is str else list(prompt)
    if turns[0]["role"] == "system":
        out["system"] = text_of(turns.pop(0)["content"])
    out["conversations"] = [_sharegpt_turn(t, at, "prompt") for t in turns]
    for name, value in ends.items():
        out[name] = {"from": "gpt", "value": value} if type(value) is str else _sharegpt_turn(value[-1], at, name)
    if "tools" in example:  # LLaMA-Factory keeps tools as a JSON string
        out["tools"] = json.dumps(example["tools"], ensure_ascii=False)
    if "images" in example:
        out["images"] = example["images"]
    return [out]


# --to NAME -> function
TARGETS: dict[str, Callable[[dict, Where], list[dict]]] = {
    "trl": to_trl, "messages": to_messages, "prompt-completion": to_prompt_completion, "text": to_text,
    "alpaca": to_alpaca, "sharegpt": to_sharegpt, "kto": to_kto, "prompt-only": to_prompt,
}
# the data kinds load_training_data serves, one per stage's needs
KINDS: dict[str, Callable[[dict, Where], list[dict]]] = {
    "preference": to_pairs, "kto": to_kto, "prompt": to_prompt, "sft": to_sft,
    "prompt-one-image": to_prompt_one_image,
}
