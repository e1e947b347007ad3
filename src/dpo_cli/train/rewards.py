"""Reward functions for the stages that sample (GRPO, RLOO, online DPO): built-ins by name, user functions by
module:function or file.py:function, a guard, and a reward model's view of image prompts."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import DpoCliError, did_you_mean
from dpo_cli.data.images import text_of

BUILTINS = ("length", "regex", "contains_answer", "reward_model")


class RewardFunctionError(DpoCliError):
    """A reward function raised, returned the wrong number of values, or returned a value that is not finite."""


class SpecError(ValueError):
    """A reward.functions entry that cannot be used; ``field`` is the key inside the entry, when there is one."""


@dataclass
class RewardSpec:
    """One reward.functions entry, parsed: a built-in with its options, or a user function's location."""

    name: str  # built-in name, or the text module:function / file.py:function
    options: dict[str, Any] = field(default_factory=dict)
    builtin: bool = True

    @property
    def label(self) -> str:
        return self.name if self.builtin or ":" not in self.name else self.name.rsplit(":", 1)[1]


def _text(completion: Any) -> str:
    """A completion's text: standard completions are strings, conversational ones a list with one message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


# --- built-ins: each takes TRL's keyword arguments and returns one float per completion -----------------------------

class LengthReward:
    """1 at the target length, falling linearly to 0 at twice (or none of) it; counts characters or words."""

    def __init__(self, target: int = 200, unit: str = "chars"):
        self.target, self.unit = target, unit

    def __call__(self, completions, **kwargs) -> list[float]:
        lengths = [len(_text(c)) if self.unit == "chars" else len(_text(c).split()) for c in completions]
        return [max(0.0, 1.0 - abs(n - self.target) / self.target) for n in lengths]


class RegexReward:
    """1 when the completion matches the pattern (anywhere, or as a whole with full: true), else 0."""

    def __init__(self, pattern: str, full: bool = False):
        self.regex = re.compile(pattern, re.DOTALL)
        self.full = full

    def __call__(self, completions, **kwargs) -> list[float]:
        match = self.regex.fullmatch if self.full else self.regex.search
        return [1.0 if match(_text(c).strip() if self.full else _text(c)) else 0.0 for c in completions]


class ContainsAnswerReward:
    """1 when the completion contains the row's answer (a dataset column), compared case- and space-insensitively."""

    def __init__(self, column: str = "answer", ignore_case: bool = True):
        self.column, self.ignore_case = column, ignore_case

    def _norm(self, text: str) -> str:
        text = " ".join(str(text).split())
        return text.lower() if self.ignore_case else text

    def __call__(self, completions, **kwargs) -> list[float]:
        answers = kwargs[self.column]
        return [1.0 if self._norm(a) in self._norm(_text(c)) else 0.0 for c, a in zip(completions, answers)]


_OPTIONS: dict[str, tuple[type, dict[str, type], str | None]] = {
    # name: (class, option name -> type, the option a bare scalar value sets)
    "length": (LengthReward, {"target": int, "unit": str}, "target"),
    "regex": (RegexReward, {"pattern": str, "full": bool}, "pattern"),
    "contains_answer": (ContainsAnswerReward, {"column": str, "ignore_case": bool}, "column"),
    "reward_model": (object, {"path": str}, "path"),
}


def parse_spec(entry: Any) -> RewardSpec:
    """Check one reward.functions entry: ``NAME``, ``{NAME: {options}}``, ``{NAME: value}`` or ``module:function``."""
    if isinstance(entry, str):
        if entry in BUILTINS:
            return _checked(RewardSpec(entry))
        if ":" in entry:
            return RewardSpec(entry, builtin=False)
        raise SpecError(f"unknown reward function '{entry}'{did_you_mean(entry, BUILTINS)}; give a built-in "
                        f"({', '.join(BUILTINS)}) or a user function as module:function or path/to/file.py:function")
    if isinstance(entry, dict) and len(entry) == 1:
        (name, value), = entry.items()
        name = str(name)
        if name not in BUILTINS:
            raise SpecError(f"unknown built-in reward '{name}'{did_you_mean(name, BUILTINS)}")
        default = _OPTIONS[name][2]
        options = dict(value) if isinstance(value, dict) else ({} if value is None else {default: value})
        return _checked(RewardSpec(name, options))
    raise SpecError("each reward function is a name (length), a mapping with one name ({regex: {pattern: ...}}) "
                    f"or module:function; got {entry!r}")


def _checked(spec: RewardSpec) -> RewardSpec:
    _, types, default = _OPTIONS[spec.name]
    for key, value in spec.options.items():
        if key not in types:
            raise SpecError(f"reward '{spec.name}' has no option '{key}'{did_you_mean(key, types)}")
        if not isinstance(value, types[key]) or (types[key] is int and isinstance(value, bool)):
            raise SpecError(f"reward '{spec.name}' option '{key}' must be {types[key].__name__}, got {value!r}")
    if spec.name in ("regex", "reward_model") and default not in spec.options:
        raise SpecError(f"reward '{spec.name}' needs its {default}: {{{spec.name}: {{{default}: ...}}}}")
    if spec.name == "regex":
        try:
            re.compile(spec.options["pattern"])
        except re.error as exc:
            raise SpecError(f"reward 'regex': pattern {spec.options['pattern']!r} is not a regular expression "
                            f"({exc})") from None
    if spec.name == "length":
        if spec.options.get("target", 1) <= 0:
            raise SpecError("reward 'length': target must be a positive number")
        if spec.options.get("unit", "chars") not in ("chars", "words"):
            raise SpecError("reward 'length': unit is chars or words")
    return spec


def load_user_function(text: str) -> Callable:
    """``path/to/file.py:function`` (relative to the working directory) or ``package.module:function``."""
    location, _, name = text.rpartition(":")
    if not location or not name.isidentifier():
        raise SpecError(f"'{text}' is not module:function or path/to/file.py:function")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise SpecError(f"reward function file {path} does not exist (looked in {Path.cwd()})")
        module_name = f"dpo_cli_user_rewards_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # so the functions pickle, as TRL's multiprocessing paths may need
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise SpecError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise SpecError(f"cannot import module '{location}' ({exc}); is it installed or on PYTHONPATH?") from None
    function = getattr(module, name, None)
    if function is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise SpecError(f"{location} has no function '{name}'{did_you_mean(name, names)}")
    if not callable(function):
        raise SpecError(f"{location}:{name} is not callable")
    return function


class GuardedReward:
    """Calls a reward function and stops the run, naming it and the batch, on an exception, a wrong count or NaN."""

    def __init__(self, label: str, function: Callable):
        self.__name__ = label  # TRL logs rewards/<name>/mean under this name
        self.function = function
        self.calls = 0
        try:
            parameters = inspect.signature(function).parameters.values()
            self.accepts = None if any(p.kind is p.VAR_KEYWORD for p in parameters) else \
                {p.name for p in parameters}
        except (TypeError, ValueError):
            self.accepts = None

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        self.calls += 1
        state = kwargs.get("trainer_state")
        where = (f"reward function '{self.__name__}', batch {self.calls}"
                 + (f" (training step {state.global_step + 1})" if state is not None else ""))
        arguments = {"prompts": prompts, "completions": completions, **kwargs}
        if self.accepts is not None:
            arguments = {k: v for k, v in arguments.items() if k in self.accepts}
        try:
            values = self.function(**arguments)
        except Exception as exc:
            raise RewardFunctionError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        try:
            values = list(values)
        except TypeError:
            raise RewardFunctionError(f"{where} returned {type(values).__name__}, not a list of numbers") from None
        if len(values) != len(completions):
            raise RewardFunctionError(f"{where} returned {len(values)} values for {len(completions)} completions; "
                                      "it must return one per completion")
        out: list[float | None] = []
        for i, value in enumerate(values):
            if value is None:  # TRL's convention: this function does not apply to this completion
                out.append(None)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise RewardFunctionError(f"{where} returned {value!r} for completion {i + 1}, not a number") \
                    from None
            if not math.isfinite(number):
                raise RewardFunctionError(f"{where} returned {number} for completion {i + 1} of "
                                          f"{len(completions)}; rewards must be finite numbers (None skips a "
                                          "completion)")
            out.append(number)
        return out


class TextPrompts:
    """A reward model's tokenizer that renders image prompts as text. TRL hands a reward model the policy's prompts
    with their image content parts, which a text model's chat template prints as Python lists (or fails on); here
    each message's parts become its text, each image the ``<image>`` placeholder: the reward model sees no image."""

    def __init__(self, tokenizer):
        object.__setattr__(self, "tokenizer", tokenizer)

    def apply_chat_template(self, conversation, *args, **kwargs):
        def flat(message):
            return {**message, "content": text_of(message["content"])} if isinstance(message, dict) and \
                isinstance(message.get("content"), list) else message

        batch = bool(conversation) and isinstance(conversation[0], list)
        conversation = [[flat(m) for m in c] for c in conversation] if batch else [flat(m) for m in conversation]
        return self.tokenizer.apply_chat_template(conversation, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):  # pad token, eos token, decode, ...: the tokenizer's own
        return getattr(self.tokenizer, name)

    def __setattr__(self, name, value):  # TRL sets a missing pad token on the tokenizer it was given
        setattr(self.tokenizer, name, value)


# what TRL's trainers pass every reward function besides the dataset's columns
TRL_ARGUMENTS = frozenset({"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                           "environments"})


def _required(function: Callable) -> list[str]:
    """The keyword parameters a function cannot be called without (none when it takes **kwargs only)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_columns(specs: Sequence[RewardSpec], columns: Sequence[str]) -> None:
    """Every column a reward function reads is in the training data: contains_answer's column, and each parameter
    without a default of a user function that TRL does not fill itself. Training and --dry-run both ask."""
    has = ", ".join(columns)
    for spec in specs:
        if spec.builtin and spec.name == "contains_answer":
            column = spec.options.get("column", "answer")
            if column not in columns:
                raise SpecError(f"reward 'contains_answer' compares with column '{column}', which the training data "
                                f"does not have (it has: {has}); keep it in prompt-only rows or set "
                                "{contains_answer: {column: NAME}}")
        elif not spec.builtin:
            for name in _required(load_user_function(spec.name)):
                if name not in TRL_ARGUMENTS and name not in columns:
                    raise SpecError(f"reward function '{spec.label}' reads column '{name}' (a parameter without a "
                                    f"default), which the training data does not have (it has: {has}); keep it in "
                                    f"prompt-only rows (a source's columns: {{{name}: COLUMN}}) or give the "
                                    "parameter a default")


def build_reward_functions(specs: Sequence[RewardSpec], columns: Sequence[str], load_reward_model: Callable):
    """(functions, processing classes) for GRPOTrainer; checks the dataset has every column a reward reads."""
    check_columns(specs, columns)
    functions, processing = [], []
    for spec in specs:
        if spec.name == "reward_model" and spec.builtin:
            model, tokenizer = load_reward_model(spec.options["path"])
            functions.append(model)
            processing.append(tokenizer)
            continue
        function = (_OPTIONS[spec.name][0](**spec.options) if spec.builtin else load_user_function(spec.name))
        functions.append(GuardedReward(spec.label, function))
        processing.append(None)
    return functions, processing
