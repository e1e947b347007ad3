"""The streaming path every data command shares: read -> rename -> filter -> detect -> adapt -> shape, with counts."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.data.checks import RowError, Where, check_of
from dpo_cli.data.formats import AdapterOptions, Format, candidates, detect, get_format
from dpo_cli.data.readers import Record, expand_paths, iter_records
from dpo_cli.data.where import FilterError, columns_of, compile_where

EXAMPLES_KEPT = 5  # locations remembered per check, for the summary


@dataclass
class Source:
    """One data source: a path (file, directory or glob) and how to read it."""

    path: str
    format: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> column in the file
    where: str | None = None
    limit: int | None = None

    @classmethod
    def of(cls, value: Any) -> Source:
        if isinstance(value, Source):
            return value
        if isinstance(value, str):
            return cls(path=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"path", "format", "columns", "where", "limit"}
            if unknown or "path" not in value:
                raise DataError(f"a data source needs 'path' and may have format, columns, where, limit "
                                f"(got {', '.join(sorted(map(str, value)))})")
            return cls(path=str(value["path"]), format=value.get("format"),
                       columns=dict(value.get("columns") or {}), where=value.get("where"),
                       limit=value.get("limit"))
        raise DataError(f"a data source must be a path or an object with a path, not {type(value).__name__}")

    def label(self) -> str | dict:
        if self.format is None and not self.columns and self.where is None and self.limit is None:
            return self.path
        return {k: v for k, v in (("path", self.path), ("format", self.format), ("columns", self.columns or None),
                                  ("where", self.where), ("limit", self.limit)) if v is not None}


@dataclass
class Stats:
    """What happened to the rows: read, filtered out, dropped per check, warned, languages seen."""

    read: int = 0
    filtered: int = 0
    produced: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_at: dict[str, list[str]] = field(default_factory=dict)
    warned: Counter = field(default_factory=Counter)
    warned_at: dict[str, list[str]] = field(default_factory=dict)
    languages: Counter = field(default_factory=Counter)
    languages_guessed: bool = False
    formats: dict[str, str] = field(default_factory=dict)

    def _note(self, counter: Counter, where: dict, check: str, error: DataError) -> None:
        counter[check] += 1
        places = where.setdefault(check, [])
        if len(places) < EXAMPLES_KEPT:
            places.append(f"{error.file}:{error.line}" if error.line is not None else str(error.file))

    def drop(self, error: DataError) -> None:
        self._note(self.dropped, self.dropped_at, check_of(error), error)

    def warn(self, error: DataError) -> None:
        self._note(self.warned, self.warned_at, check_of(error), error)


_CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


def guess_language(text: str) -> str:
    """A script-based guess, used only when the data has no language column."""
    if text.isascii():
        return "en"
    if _CJK.search(text):
        return "ja" if _KANA.search(text) else "zh"
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if _CYRILLIC.search(text):
        return "ru"
    return "other"


def prompt_text(example: dict) -> str:
    """The newest user turn of an example, for language guesses and statistics."""
    prompt = example.get("prompt")
    if prompt is None:
        prompt = example.get("messages") or example.get("conversations") or example.get("instruction") or ""
    if type(prompt) is str:
        return prompt
    if prompt and type(prompt[-1]) is dict and prompt[-1].get("role") == "user":
        return prompt[-1]["content"]
    for turn in reversed(prompt):
        if type(turn) is dict and turn.get("role", turn.get("from")) in ("user", "human"):
            return turn.get("content", turn.get("value", ""))
    return ""


def _check_where_columns(names: set[str], row: dict, at: Where) -> None:
    """A --where column missing from the first row of a file is almost always a typo: say so before filtering."""
    for name in sorted(names):
        if name not in row:
            raise DataError(f"--where names column '{name}', which the first row does not have"
                            f"{did_you_mean(name, map(str, row))}", file=at.file, line=at.line)


class RowPipeline:
    """Turns sources into output rows of one target shape; bad rows raise, or are counted and handed to on_reject."""

    def __init__(self, target: Callable[[dict, Where], list[dict]], options: AdapterOptions | None = None, *,
                 keep: Sequence[str] = (), skip_invalid: bool = False,
                 on_reject: Callable[[DataError, dict | None], None] | None = None,
                 count_languages: bool = False):
        self.target = target
        self.options = options or AdapterOptions()
        self.options.warn = self._warn
        self.keep = tuple(keep)
        self.skip_invalid = skip_invalid
        self.on_reject = on_reject
        self.count_languages = count_languages
        self.stats = Stats()
        self._text_prompts: bool | None = None  # standard (text) or conversational, fixed by the first row

    def _warn(self, error: RowError) -> None:
        self.stats.warn(error)

    def _reject(self, error: DataError, row: dict | None) -> None:
        if not self.skip_invalid:
            raise error
        self.stats.drop(error)
        if self.on_reject is not None:
            self.on_reject(error, row)

    def rows(self, source: Source) -> Iterator[tuple[Record, dict]]:
        """Yield ``(record, output row)`` for every good row of the source, in file order."""
        forced = get_format(source.format) if source.format else None
        predicate = compile_where(source.where) if source.where else None
        where_columns = {name.split(".")[0] for name in columns_of(source.where)} if source.where else set()
        renames = tuple(source.columns.items())
        limit = source.limit
        produced = 0
        for path in expand_paths(source.path):
            fmt = forced
            at = Where(str(path), 0)
            for record in iter_records(path, on_error=lambda e: self._reject(e, None)):
                self.stats.read += 1
                row = record.row
                at.line = record.line
                if renames:
                    row = self._rename(row, renames, at)
                    if row is None:
                        continue
                if at.file not in self.stats.formats:  # the first readable row of this file
                    _check_where_columns(where_columns, row, at)
                    fmt = forced or detect(row, at.file, at.line)
                    self.stats.formats[at.file] = fmt.name
                if predicate is not None:
                    try:
                        if not predicate(row):
                            self.stats.filtered += 1
                            continue
                    except FilterError as exc:
                        self._reject(at.error("filter", str(exc), exc.field), row)
                        continue
                try:
                    outputs = self._convert(row, fmt, at)
                except RowError as exc:
                    if forced is None:
                        exc = self._mixed(exc, row, fmt, at)
                    self._reject(exc, row)
                    continue
                for out in outputs:
                    yield record, out
                    produced += 1
                    if limit is not None and produced >= limit:
                        return

    def _convert(self, row: dict, fmt: Format, at: Where) -> list[dict]:
        examples = fmt.adapter(row, at, self.options)
        if len(examples) == 1:
            outputs = self.target(examples[0], at)
        else:
            outputs = [out for example in examples for out in self.target(example, at)]
        if not outputs:
            return outputs
        prompt = outputs[0].get("prompt")
        if prompt is not None:
            is_text = type(prompt) is str
            if self._text_prompts is None:
                self._text_prompts = is_text
            elif is_text != self._text_prompts:
                kind = ("plain text", "conversational") if is_text else ("conversational", "plain text")
                raise at.error("mixed-format", f"this row is {kind[0]} but earlier rows are {kind[1]}; "
                               "one output cannot mix both", "prompt")
        if self.keep or fmt.keeps_extra:
            extra = {k: v for k, v in row.items() if k not in fmt.columns} if fmt.keeps_extra else {}
            for name in self.keep:
                if name not in row:
                    raise at.error("missing-field", "named by --keep but missing from this row", name)
                extra[name] = row[name]
            for out in outputs:
                out.update(extra)
        if self.count_languages:
            language = row.get("language")
            if language is None:
                language = row.get("lang")
            if type(language) is not str:
                language = guess_language(prompt_text(outputs[0]))
                self.stats.languages_guessed = True
            self.stats.languages[language] += 1
        self.stats.produced += len(outputs)
        return outputs

    def _rename(self, row: dict, renames: tuple, at: Where) -> dict | None:
        row = dict(row)
        for canonical, column in renames:
            if column not in row:
                self._reject(at.error("missing-field", f"column '{column}' (named by --map {canonical}={column}) "
                                      "is missing", column), row)
                return None
            row[canonical] = row.pop(column)
        return row

    @staticmethod
    def _mixed(error: RowError, row: dict, fmt: Format, at: Where) -> RowError:
        """A row that fails its file's format but fits another one is a mixed-format file, said as such."""
        fits = candidates(row)
        if fits and fmt.name not in fits:
            return at.error("mixed-format", f"this row looks like {', '.join(fits)} but the file was detected as "
                            f"{fmt.name} from its first row (mixed formats in one file; {error.reason})",
                            error.field)
        return error
