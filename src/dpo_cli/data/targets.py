"""Output shapes: canonical examples -> the rows a stage or a --to option asks for (TRL, text, alpaca, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpo_cli.data.checks import Where


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


_SHAPE_WORDS = {"pair": "preference pairs", "unpaired": "unpaired (KTO) rows", "conversation": "conversations",
                "prompt-completion": "prompt-completion rows", "prompt": "prompt-only rows"}


def _cannot(example: dict, target: str, at: Where):
    return at.error("mixed-format", f"the row holds {_SHAPE_WORDS[shape_of(example)]}, which cannot become "
                    f"{target}", None)


def to_trl(example: dict, at: Where) -> list[dict]:
    if "chosen" not in example:
        raise _cannot(example, "preference pairs", at)
    return [example]


def to_kto(example: dict, at: Where) -> list[dict]:
    if "chosen" in example:
        prompt = example["prompt"]
        return [{"prompt": prompt, "completion": example["chosen"], "label": True},
                {"prompt": prompt, "completion": example["rejected"], "label": False}]
    if "label" in example:
        return [example]
    raise _cannot(example, "unpaired (KTO) rows", at)


def to_prompt(example: dict, at: Where) -> list[dict]:
    if "messages" in example:
        turns = example["messages"]
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=-1)
        if last_user < 0:
            raise at.error("bad-role", "the conversation has no user turn to use as a prompt", "messages")
        return [{"prompt": turns[:last_user + 1]}]
    return [{"prompt": example["prompt"]}]


def to_sft(example: dict, at: Where) -> list[dict]:
    if "messages" in example:
        return [example]
    if "chosen" in example:
        completion = example["chosen"]
    elif "label" in example:
        if not example["label"]:
            return []  # an undesirable completion is not something to imitate
        completion = example["completion"]
    elif "completion" in example:
        completion = example["completion"]
    else:
        raise _cannot(example, "supervised (SFT) rows: there is no response to learn", at)
    if type(example["prompt"]) is str:
        return [{"prompt": example["prompt"], "completion": completion}]
    return [{"messages": example["prompt"] + completion}]


def _single_user(prompt: Any, at: Where, target: str) -> str:
    if type(prompt) is str:
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    raise at.error("bad-value", f"the prompt has a system message or earlier turns, which {target} cannot hold; "
                   f"keep the default conversational output", "prompt")


def _response(value: Any) -> str:
    return value if type(value) is str else value[-1]["content"]


def to_text(example: dict, at: Where) -> list[dict]:
    if "chosen" not in example:
        raise _cannot(example, "plain-text preference pairs", at)
    return [{"prompt": _single_user(example["prompt"], at, "plain text"), "chosen": _response(example["chosen"]),
             "rejected": _response(example["rejected"])}]


def to_alpaca(example: dict, at: Where) -> list[dict]:
    """alpaca with system and history; the last user turn is the instruction, input stays empty."""
    if "chosen" not in example:
        raise _cannot(example, "alpaca preference rows", at)
    prompt = example["prompt"]
    out: dict[str, Any] = {}
    if type(prompt) is str:
        out["instruction"] = prompt
    else:
        turns = list(prompt)
        if turns[0]["role"] == "system":
            out["system"] = turns.pop(0)["content"]
        history = []
        for i in range(0, len(turns) - 1, 2):
            user, assistant = turns[i], turns[i + 1]
            if user["role"] != "user" or assistant["role"] != "assistant":
                raise at.error("bad-value", "alpaca history holds only user/assistant pairs; this prompt has "
                               f"a {assistant['role'] if user['role'] == 'user' else user['role']} turn", "prompt")
            history.append([user["content"], assistant["content"]])
        if turns[-1]["role"] != "user":
            raise at.error("bad-value", "alpaca needs the prompt to end with a user turn", "prompt")
        out["instruction"] = turns[-1]["content"]
        if history:
            out["history"] = history
    out["input"] = ""
    out["chosen"] = _response(example["chosen"])
    out["rejected"] = _response(example["rejected"])
    return [out]


_SHAREGPT_TAGS = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}


def to_sharegpt(example: dict, at: Where) -> list[dict]:
    if "chosen" not in example:
        raise _cannot(example, "sharegpt preference rows", at)
    prompt = example["prompt"]
    out: dict[str, Any] = {}
    turns = [{"role": "user", "content": prompt}] if type(prompt) is str else list(prompt)
    if turns[0]["role"] == "system":
        out["system"] = turns.pop(0)["content"]
    out["conversations"] = [{"from": _SHAREGPT_TAGS[t["role"]], "value": t["content"]} for t in turns]
    out["chosen"] = {"from": "gpt", "value": _response(example["chosen"])}
    out["rejected"] = {"from": "gpt", "value": _response(example["rejected"])}
    if "tools" in example:
        out["tools"] = example["tools"]
    return [out]


# --to NAME -> function; also the data kinds load_training_data serves
TARGETS: dict[str, Callable[[dict, Where], list[dict]]] = {
    "trl": to_trl, "text": to_text, "alpaca": to_alpaca, "sharegpt": to_sharegpt, "kto": to_kto,
    "prompt-only": to_prompt,
}
KINDS: dict[str, Callable[[dict, Where], list[dict]]] = {
    "preference": to_trl, "kto": to_kto, "prompt": to_prompt, "sft": to_sft,
}
