"""The streaming path every data command shares: read -> rename -> filter -> detect -> adapt -> shape, with counts."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.data import hub
from dpo_cli.data.checks import CHECKS, OMISSIONS, WARNINGS, Omitted, RowError, Where, check_of
from dpo_cli.data.formats import AdapterOptions, Format, Tags, candidates, detect, get_format
from dpo_cli.data.hub import HubSpec
from dpo_cli.data.images import text_of
from dpo_cli.data.readers import Record, expand_paths, iter_records
from dpo_cli.data.registry import registry_source
from dpo_cli.data.targets import SHAPE_WORDS, shape_of
from dpo_cli.data.where import FilterError, columns_of, compile_where

EXAMPLES_KEPT = 3  # messages remembered per check, for the summaries
# where the rows are: a local path, a registry entry, or a dataset on the Hub
ORIGIN_KEYS = ("path", "registry", "hub")
# how to read them, for any origin
READ_KEYS = ("format", "columns", "where", "limit", "skip_invalid", "rejects", "pairs", "preference")
SOURCE_KEYS = (*ORIGIN_KEYS, "name", *hub.HUB_KEYS[1:], *READ_KEYS)


@dataclass
class Source:
    """One data source: a path (file, directory or glob) and how to read it."""

    path: str
    format: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> column (a dotted path for nesting)
    where: str | None = None
    limit: int | None = None
    tags: Tags | None = None  # message tags of a LLaMA-Factory registry entry
    skip_invalid: bool = False  # drop bad rows (counted) instead of stopping
    rejects: str | None = None  # with skip_invalid: keep the bad rows and their reasons here
    registry: str | None = None  # where path, format, columns and tags came from
    name: str | None = None
    hub: HubSpec | None = None  # a dataset on the Hub (path is then its label)
    pairs: str | None = None  # ranked data: which pairs (convert-data's --pairs)
    preference: str | None = None  # PKU-SafeRLHF: which answer is chosen (convert-data's --preference)
    media_dir: str | None = None  # where relative image paths start (a registry entry's folder); None: each file's

    def __post_init__(self) -> None:
        if self.hub is None and hub.is_hub(self.path):  # the string form, hub:ORG/NAME[@SPLIT]
            self.hub = HubSpec.parse(self.path)

    @classmethod
    def of(cls, value: Any) -> Source:
        if isinstance(value, Source):
            return value
        if isinstance(value, str):
            return cls(path=value)
        if isinstance(value, Mapping):
            return cls._of_mapping(value)
        raise DataError(f"a data source must be a path or an object with a path, not {type(value).__name__}")

    @classmethod
    def _of_mapping(cls, value: Mapping) -> Source:
        unknown = sorted(map(str, set(value) - set(SOURCE_KEYS)))
        if unknown:
            raise DataError(f"unknown key '{unknown[0]}' in a data source{did_you_mean(unknown[0], SOURCE_KEYS)}; "
                            f"a source takes one of {', '.join(ORIGIN_KEYS)} (registry with name), and may have "
                            f"{', '.join(READ_KEYS)} (hub with {', '.join(hub.HUB_KEYS[1:])})")
        origins = [k for k in ORIGIN_KEYS if k in value]
        if len(origins) != 1 or ("registry" in value) != ("name" in value):
            raise DataError(f"a data source needs exactly one of {', '.join(ORIGIN_KEYS)} (registry with name), "
                            f"got {', '.join(sorted(map(str, value)))}")
        if "hub" not in value and any(k in value for k in hub.HUB_KEYS[1:]):
            raise DataError(f"{', '.join(k for k in hub.HUB_KEYS[1:] if k in value)} apply to hub sources only")
        common = {"where": value.get("where"), "skip_invalid": bool(value.get("skip_invalid")),
                  "rejects": value.get("rejects"), "pairs": value.get("pairs"), "preference": value.get("preference")}
        if "registry" in value:
            if "format" in value or "columns" in value:
                raise DataError("a registry source takes its format and columns from the registry entry; "
                                "give path instead to set them", file=value["registry"])
            entry = registry_source(str(value["registry"]), str(value["name"]))
            limit = value.get("limit", entry.pop("limit"))
            return cls(**entry, **common, limit=limit, registry=str(value["registry"]), name=str(value["name"]))
        read = {"format": value.get("format"), "columns": dict(value.get("columns") or {}),
                "limit": value.get("limit"), **common}
        if "hub" in value:
            spec = HubSpec.of(value)
            return cls(path=spec.label, hub=spec, **read)
        return cls(path=str(value["path"]), **read)

    def options(self, given: AdapterOptions) -> AdapterOptions:
        """The adapter options for this source: its own pairs/preference over the ones given for all sources."""
        if self.pairs is None and self.preference is None:
            return given
        return AdapterOptions(preference=self.preference or given.preference, pairs=self.pairs or given.pairs,
                              warn=given.warn, tags=given.tags)

    def local_files(self) -> list[Path]:
        """The local files this source reads (none for a Hub dataset: datasets keeps those in its cache)."""
        return [] if self.hub is not None else expand_paths(self.path)

    def inputs(self, on_error) -> Iterator[tuple[str, Iterator[Record]]]:
        """``(file label, its records)`` for each file this source names, opened one after the other."""
        if self.hub is not None:
            dataset, _ = hub.open_dataset(self.hub)
            label = self.hub.label
            yield label, (Record(label, number, row) for number, row in enumerate(hub.rows(dataset), start=1))
            return
        for path in self.local_files():
            yield str(path), iter_records(path, on_error=on_error)


@dataclass(frozen=True)
class Words:
    """How messages name a source's options: convert-data's and inspect-data's flags, or a recipe source's keys
    (under train, a hint to pass --map would name a flag train does not take)."""

    format: str
    rename: str  # with {canonical} and {column}
    where: str
    unused: str  # what to do with a column no output keeps


FLAGS = Words(format="--format", rename="--map {canonical}={column}", where="--where",
              unused="keep one with --keep COLUMN, or rename it with --map")
RECIPE_KEYS = Words(format="the source's format:", rename="columns: {{{canonical}: {column}}}", where="where:",
                    unused="rename one under the source's columns: to use it")


@dataclass
class Stats:
    """What happened to the rows: read, filtered out, dropped per check, warned, left out, unused columns."""

    read: int = 0
    filtered: int = 0
    produced: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_at: dict[str, list[str]] = field(default_factory=dict)  # check -> first "file:line: field: reason"
    warned: Counter = field(default_factory=Counter)
    warned_at: dict[str, list[str]] = field(default_factory=dict)
    omitted: Counter = field(default_factory=Counter)
    omitted_at: dict[str, list[str]] = field(default_factory=dict)
    unused: Counter = field(default_factory=Counter)  # column -> rows where it held a value no output kept
    languages: Counter = field(default_factory=Counter)
    languages_guessed: bool = False
    formats: dict[str, str] = field(default_factory=dict)
    words: Words = FLAGS

    def to_json(self) -> dict[str, Any]:
        """The counts, for prepared data to keep (the wording is the reader's, not the data's)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "words"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        """The Stats ``to_json`` wrote (prepared data keeps them, so a run on cached rows says the same)."""
        return cls(**{f.name: Counter(data[f.name]) if f.default_factory is Counter else data[f.name]
                      for f in fields(cls) if f.name in data})

    @staticmethod
    def _note(counter: Counter, where: dict, key: str, message: str) -> None:
        counter[key] += 1
        places = where.setdefault(key, [])
        if len(places) < EXAMPLES_KEPT:
            places.append(message)

    def drop(self, error: DataError) -> None:
        self._note(self.dropped, self.dropped_at, check_of(error), str(error))

    def warn(self, error: DataError) -> None:
        self._note(self.warned, self.warned_at, check_of(error), str(error))

    def omit(self, reason: str, at: Where) -> None:
        self._note(self.omitted, self.omitted_at, reason, f"{at.file}:{at.line}")

    def findings(self) -> list[tuple[str, int, str, list[str]]]:
        """(what, rows, meaning, first places) for each check that dropped or warned, each reason rows were left
        out, and each column whose values no output kept: the lines both data commands print."""
        out = [(f"dropped: {k}", n, CHECKS.get(k, k), self.dropped_at.get(k, [])) for k, n in
               self.dropped.most_common()]
        out += [(f"warning: {k}", n, WARNINGS.get(k, k), self.warned_at.get(k, [])) for k, n in
                self.warned.most_common()]
        out += [(f"left out: {k}", n, OMISSIONS.get(k, k), self.omitted_at.get(k, [])) for k, n in
                self.omitted.most_common()]
        if self.unused:
            out.append(("columns not used", len(self.unused), "they held values the output has no place for: "
                        f"{self.words.unused}", [f"{k} ({n:,} rows)" for k, n in self.unused.most_common()]))
        return out


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
    # Curly quotes, dashes, ellipses, no-break spaces and emoji are common in English text; only letters outside
    # ASCII (é, ß, ...) say another language.
    if all(ch.isascii() or unicodedata.category(ch)[0] in "PSZ" for ch in text):
        return "en"
    return "other"


def prompt_text(example: dict) -> str:
    """The newest user turn of an example, for language guesses and statistics."""
    prompt = example.get("prompt")
    if prompt is None:
        prompt = example.get("messages") or example.get("conversations") or example.get("instruction") or ""
    if type(prompt) is str:
        return prompt
    if prompt and type(prompt[-1]) is dict and prompt[-1].get("role") == "user":
        return text_of(prompt[-1]["content"])
    for turn in reversed(prompt):
        if type(turn) is dict and turn.get("role", turn.get("from")) in ("user", "human"):
            return text_of(turn.get("content", turn.get("value", "")))
    return ""


_MISSING = object()


def _take(row: dict, path: str) -> Any:
    """Remove and return the value at a dotted path (``input.messages``), copying the objects on the way so the
    source row is untouched; an object left empty goes too, so it is not reported as an unused column."""
    head, _, rest = path.partition(".")
    inner = row.get(head)
    if type(inner) is not dict:
        return _MISSING
    inner = dict(inner)
    value = inner.pop(rest, _MISSING) if rest in inner or "." not in rest else _take(inner, rest)
    if value is not _MISSING:
        if inner:
            row[head] = inner
        else:
            del row[head]
    return value


def _check_where_columns(names: set[str], row: dict, at: Where, words: Words) -> None:
    """A --where column missing from the first row of a file is almost always a typo: say so before filtering."""
    for name in sorted(names):
        if name not in row:
            raise DataError(f"{words.where} names column '{name}', which the first row does not have"
                            f"{did_you_mean(name, map(str, row))}", file=at.file, line=at.line)


class RowPipeline:
    """Turns sources into output rows of one target shape; bad rows raise, or are counted and handed to on_reject."""

    def __init__(self, target: Callable[[dict, Where], list[dict]], options: AdapterOptions | None = None, *,
                 keep: Sequence[str] = (), skip_invalid: bool = False,
                 on_reject: Callable[[DataError, dict | None], None] | None = None,
                 count_languages: bool = False, words: Words = FLAGS):
        self.target = target
        self.options = options or AdapterOptions()
        self.options.warn = self._warn
        self.keep = tuple(keep)
        self.skip_invalid = skip_invalid
        self.on_reject = on_reject
        self.count_languages = count_languages
        self.words = words
        self.stats = Stats(words=words)
        self._kind: tuple[str, bool] | None = None  # (shape, text prompt) of the first output row
        self._keys: set[str] = set()  # its columns
        self._visits: set[tuple] = set()  # (file, how it is read) of every file read so far

    def _warn(self, error: RowError) -> None:
        self.stats.warn(error)

    def _reject(self, error: DataError, row: dict | None) -> None:
        if not self.skip_invalid:
            raise error
        self.stats.drop(error)
        if self.on_reject is not None:
            self.on_reject(error, row)

    def _unreadable(self, error: DataError) -> None:
        """A line the reader could not make a row of (not JSON, not an object) was read all the same: counted."""
        self.stats.read += 1
        self._reject(error, None)

    def rows(self, source: Source) -> Iterator[tuple[Record, dict]]:
        """Yield ``(record, output row)`` for every good row of the source, in file order."""
        forced = get_format(source.format) if source.format else None
        given, self.options = self.options, source.options(self.options)
        self.options.tags = source.tags
        self.options.media_dir = source.media_dir
        try:
            yield from self._rows(source, forced)
        finally:
            self.options = given

    def _rows(self, source: Source, forced: Format | None) -> Iterator[tuple[Record, dict]]:
        predicate = compile_where(source.where) if source.where else None
        where_columns = {name.split(".")[0] for name in columns_of(source.where)} if source.where else set()
        renames = tuple(source.columns.items())
        limit = source.limit
        produced = 0
        for file, records in source.inputs(on_error=self._unreadable):
            fmt = None
            at = Where(file, 0)
            # The same file may be read again with other columns or where (two sources, one file); read the same
            # way again, its rows count twice, which is rarely meant: said per row, never refused.
            place = file if source.hub is not None else str(Path(file).resolve())
            visit = (place, source.format, renames, source.where, source.limit, source.tags)
            again = visit in self._visits
            self._visits.add(visit)
            for record in records:
                self.stats.read += 1
                row = record.row
                at.line = record.line
                if again:
                    message = "read again (an earlier source reads this file the same way)"
                    self.stats.warn(at.error("read-twice", message, None))
                if renames:
                    row = self._rename(row, renames, at, strict=source.registry is None)
                    if row is None:
                        continue
                if fmt is None:  # the first readable row of this file in this source
                    _check_where_columns(where_columns, row, at, self.words)
                    fmt = forced or detect(row, at.file, at.line, self.words.format,
                                           self.words.rename.format(canonical="prompt", column="COLUMN"))
                    self.options.check_applies(fmt.name, at.file)
                    self.stats.formats.setdefault(at.file, fmt.name)
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
                except Omitted as omitted:
                    self.stats.omit(omitted.reason, at)
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
        self._check_kind(outputs[0], at)
        if self.keep or fmt.keeps_extra:
            extra = {k: v for k, v in row.items() if k not in fmt.columns} if fmt.keeps_extra else {}
            for name in self.keep:
                if name not in row:
                    raise at.error("missing-field", "named by --keep but missing from this row", name)
                extra[name] = row[name]
            for out in outputs:
                out.update(extra)
        if not fmt.keeps_extra and not row.keys() <= fmt.columns:  # the subset test keeps the common row cheap
            for name, value in row.items():
                if name not in fmt.columns and value is not None and value != "" and value != [] \
                        and value != {} and name not in self.keep:
                    self.stats.unused[name] += 1
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

    def _check_kind(self, output: dict, at: Where) -> None:
        """One output holds one kind of row: one shape (pairs, conversations, ...), all text or all messages."""
        text = type(output.get("prompt")) is str
        if output.keys() == self._keys and text == self._kind[1]:  # the common case: a row like the first
            return
        kind = (shape_of(output), text)
        if self._kind is None:
            self._keys = set(output)
            self._kind = kind
        elif kind != self._kind:
            if kind[0] != self._kind[0]:
                raise at.error("mixed-format", f"this row holds {SHAPE_WORDS[kind[0]]} but earlier rows hold "
                               f"{SHAPE_WORDS[self._kind[0]]}; one output cannot mix both", None)
            words = ("plain text", "conversational") if kind[1] else ("conversational", "plain text")
            raise at.error("mixed-format", f"this row is {words[0]} but earlier rows are {words[1]}; "
                           "one output cannot mix both", "prompt")

    def _rename(self, row: dict, renames: tuple, at: Where, strict: bool) -> dict | None:
        """Apply ``canonical: column`` renames. A --map column a row lacks is a mistake; a registry entry's column a
        row lacks is an optional one (LLaMA-Factory reads it as empty), and the adapter names any it needs."""
        row = dict(row)
        for canonical, column in renames:
            value = row.pop(column, _MISSING) if column in row or "." not in column else _take(row, column)
            if value is _MISSING and not strict:
                continue
            if value is _MISSING:
                named = self.words.rename.format(canonical=canonical, column=column)
                self._reject(at.error("missing-field", f"column '{column}' (named by {named}) is missing", column), row)
                return None
            row[canonical] = value
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
