"""Readers that stream rows from local files, each row with the file and line (or row index) it came from."""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from dpo_cli.core.errors import DataError


def _surrogate_field(value: Any, path: str = "") -> str | None:
    """Where a JSON value holds a lone UTF-16 surrogate escape (``"\\ud800"`` without its pair): the stdlib parser
    takes it, but no UTF-8 file, tokenizer or console can carry it. Keys first, then values, depth first."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if type(item) is str:
            if not item.isascii() and any("\ud800" <= ch <= "\udfff" for ch in item):
                return where or "(the row)"
        elif type(item) is dict:
            for key, child in reversed(item.items()):
                if _surrogate_field(key) is not None:  # the key itself, escaped so the message can be printed
                    shown = ascii(key)[1:-1]
                    return f"{where}.{shown}" if where else shown
                stack.append((f"{where}.{key}" if where else str(key), child))
        elif type(item) is list:
            stack.extend((f"{where}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def _strict_loads(raw: bytes | str) -> Any:
    # the stdlib's parser, refusing what orjson refuses (a lone surrogate), so both paths read the same rows
    value = json.loads(raw)
    if _surrogate_field(value) is not None:
        raise ValueError("lone surrogate")
    return value


try:  # orjson parses 2-3x faster; without it the stdlib gives the same rows
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _fast_loads = _strict_loads

OnError = Callable[[DataError], None] | None

BOM = b"\xef\xbb\xbf"


class Record(NamedTuple):
    """One raw row and where it came from: ``line`` is the 1-based line (jsonl) or row number (other files)."""

    file: str
    line: int
    row: dict[str, Any]


def _raise_or_report(error: DataError, on_error: OnError) -> None:
    if on_error is None:
        raise error
    on_error(error)


def _parse_line(raw: bytes, file: str, number: int, offset: int) -> Any:
    """The slow, exact path for a line the fast parser refused: say where the UTF-8 or the JSON breaks."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 at byte offset {offset + exc.start} of the file "
                        f"(byte {exc.start + 1} of the line)", file=file, line=number) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON at column {exc.colno}: {exc.msg}", file=file, line=number) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", file=file, line=number) from None
    _refuse_surrogate(value, file, number)
    return value


def _refuse_surrogate(value: Any, file: object, line: int) -> None:
    field = _surrogate_field(value)
    if field is not None:
        raise DataError(LONE_SURROGATE, file=file, line=line, field=field)


LONE_SURROGATE = ("invalid UTF-8 text: a \\uD800-\\uDFFF escape without its other half (a lone UTF-16 surrogate, often "
                  "a string cut in the middle of an emoji); no UTF-8 text can hold it: fix or drop the row")


def _lines(f, file: str) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of an open (maybe gzip) file; a damaged gzip stream is a DataError at the line it stops."""
    number = 0
    try:
        for number, raw in enumerate(f, start=1):  # noqa: B007 - number is read after the loop
            yield number, raw
    except gzip.BadGzipFile:
        raise DataError("not a gzip file, though its name ends in .gz", file=file) from None
    except (EOFError, zlib.error) as exc:
        raise DataError(f"the gzip stream is damaged or cut short after line {number} ({exc})", file=file,
                        line=number + 1) from None


def _jsonl(path: Path, on_error: OnError) -> Iterator[Record]:
    file = str(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    loads = _fast_loads
    offset = 0
    with opener(path, "rb") as f:
        for number, raw in _lines(f, file):
            start, offset = offset, offset + len(raw)
            if number == 1 and raw.startswith(BOM):
                raw = raw[3:]
                start += 3
            if raw.isspace() or not raw:
                continue
            try:
                row = loads(raw)
            except (ValueError, RecursionError):
                try:
                    row = _parse_line(raw, file, number, start)
                except DataError as exc:
                    _raise_or_report(exc, on_error)
                    continue
            if type(row) is not dict:
                _raise_or_report(DataError(f"expected a JSON object, found {_json_type(row)}", file=file,
                                           line=number), on_error)
                continue
            yield Record(file, number, row)


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _json(path: Path, on_error: OnError) -> Iterator[Record]:
    # A top-level array has to be parsed whole; row numbers count array elements from 1.
    raw = path.read_bytes()
    if raw.startswith(BOM):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 at byte offset {exc.start}", file=path, line=line) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            # one object per line under a .json name (the Hub's SHP, many exports): read it as JSON lines
            yield from _jsonl(path, on_error)
            return
        raise DataError(f"invalid JSON at column {exc.colno}: {exc.msg}", file=path, line=exc.lineno) from None
    except RecursionError:
        raise DataError("JSON nested too deeply to read", file=path) from None
    if isinstance(data, dict):
        raise DataError("a .json data file must hold a top-level array of objects, found one object "
                        "(for one object per line, name the file .jsonl)", file=path, line=1)
    if not isinstance(data, list):
        raise DataError(f"a .json data file must hold a top-level array of objects, found {_json_type(data)}",
                        file=path, line=1)
    file = str(path)
    for index, row in enumerate(data, start=1):
        if type(row) is not dict:
            _raise_or_report(DataError(f"expected a JSON object, found {_json_type(row)}", file=file, line=index),
                             on_error)
            continue
        try:
            _refuse_surrogate(row, file, index)
        except DataError as exc:
            _raise_or_report(exc, on_error)
            continue
        yield Record(file, index, row)


def _arrow_batches(batches: Iterable, file: str) -> Iterator[Record]:
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            index += 1
            yield Record(file, index, row)


def _parquet(path: Path, on_error: OnError) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"not a readable parquet file: {exc}", file=path) from None
    yield from _arrow_batches(parquet.iter_batches(batch_size=2048), str(path))


def _csv(path: Path, on_error: OnError) -> Iterator[Record]:
    import csv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    file = str(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            for row in reader:
                # line_num is the physical line where this record ended, which is where an editor shows it
                if None in row:
                    _raise_or_report(DataError("more values than header columns", file=file,
                                               line=reader.line_num), on_error)
                    continue
                yield Record(file, reader.line_num, row)
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 near byte offset {exc.start} of a read block", file=file) from None
    except csv.Error as exc:
        raise DataError(f"invalid CSV: {exc}", file=file) from None


def _arrow_dir(path: Path, on_error: OnError) -> Iterator[Record]:
    """A directory written by ``datasets.Dataset.save_to_disk``: arrow stream files listed in state.json."""
    import pyarrow as pa

    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        files = sorted(path.glob("*.arrow"))
    if not files:
        raise DataError("no .arrow files in this directory (expected one written by datasets' save_to_disk)",
                        file=path)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"its state.json lists {', '.join(missing)}, which is not in the directory (a copy that "
                        f"left the data behind?)", file=path)
    index = 0
    for arrow_file in files:
        try:
            with pa.memory_map(str(arrow_file)) as source:
                reader = pa.ipc.open_stream(source)
                for batch in reader:
                    for row in batch.to_pylist():
                        index += 1
                        yield Record(str(path), index, row)
        except pa.ArrowInvalid as exc:
            raise DataError(f"not a readable arrow file: {exc}", file=arrow_file) from None


READERS: dict[str, Callable[[Path, OnError], Iterator[Record]]] = {
    ".jsonl": _jsonl, ".jsonl.gz": _jsonl, ".ndjson": _jsonl, ".json": _json, ".parquet": _parquet,
    ".csv": _csv, ".tsv": _csv,
}


def _reader_for(path: Path) -> Callable[[Path, OnError], Iterator[Record]]:
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise DataError(f"this is a DatasetDict; name one split directory instead "
                            f"(for example {path / splits[0]})" if splits else "this is an empty DatasetDict",
                            file=path)
        return _arrow_dir
    name = path.name.lower()
    for suffix in sorted(READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return READERS[suffix]
    raise DataError(f"unsupported data file type '{''.join(path.suffixes) or path.name}'; expected one of "
                    f"{', '.join(READERS)} or a save_to_disk directory", file=path)


def _check_regular(path: Path) -> Path:
    if not (path.is_file() or path.is_dir()):  # a pipe blocks for ever, /dev/zero never ends
        raise DataError("not a regular file (a pipe, device or socket); give a data file or directory", file=path)
    return path


def expand_paths(spec: str | Path) -> list[Path]:
    """One path, glob or built-in name -> the files it names, in a stable order."""
    from dpo_cli.core.builtins import resolve_builtin

    text = resolve_builtin(str(spec))
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        if not matches:
            raise DataError("the pattern matches no files", file=text)
        return [_check_regular(p) for p in matches]
    path = Path(text)
    if not path.exists():
        raise DataError("data file not found", file=path)
    return [_check_regular(path)]


def iter_records(path: str | Path, on_error: OnError = None) -> Iterator[Record]:
    """Stream the rows of one file. With ``on_error``, rows that cannot be read are reported and skipped."""
    path = Path(path)
    if not path.exists():
        raise DataError("data file not found", file=path)
    _check_regular(path)
    yield from _reader_for(path)(path, on_error)
