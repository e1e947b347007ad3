"""Readers that stream rows from local files, each row with the file and line (or row index) it came from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError


@dataclass(frozen=True)
class Record:
    """One raw row and where it came from: ``line`` is the 1-based line (jsonl) or row number (others)."""

    file: str
    line: int
    row: dict[str, Any]


def _jsonl(path: Path) -> Iterator[Record]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"invalid UTF-8 at byte {exc.start} of the line", file=path, line=number) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON at column {exc.colno}: {exc.msg}", file=path, line=number) from None
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, found {type(row).__name__}", file=path, line=number)
            yield Record(str(path), number, row)


def _json(path: Path) -> Iterator[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON at column {exc.colno}: {exc.msg}", file=path, line=exc.lineno) from None
    if not isinstance(data, list):
        raise DataError("a .json data file must hold a top-level array of objects", file=path, line=1)
    for index, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, found {type(row).__name__}", file=path, line=index)
        yield Record(str(path), index, row)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            index += 1
            yield Record(str(path), index, row)


READERS = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet}


def iter_records(path: str | Path) -> Iterator[Record]:
    path = Path(path)
    if not path.exists():
        raise DataError("data file not found", file=path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported data file type '{path.suffix}'; expected one of {', '.join(READERS)}",
                        file=path)
    yield from reader(path)
