"""Streaming writers for converted rows: jsonl (optionally gzip), a json array, or parquet, by file extension."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import DataError


def _bytes(value: Any) -> str:
    """Binary values (an image's bytes in a rejected parquet row) as a data: URI, which dpo-cli reads back."""
    if isinstance(value, (bytes, bytearray)):
        from dpo_cli.data.images import data_uri

        return data_uri(bytes(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


try:  # same bytes as the stdlib's compact form, several times faster
    from orjson import dumps as _orjson_dumps

    def dumps(row: Any) -> bytes:
        try:
            return _orjson_dumps(row, default=_bytes)
        except TypeError:  # integers beyond 64 bits and the like: let the stdlib do it
            return json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=_bytes).encode()
except ImportError:  # pragma: no cover
    def dumps(row: Any) -> bytes:
        return json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=_bytes).encode()

OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def output_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(OUTPUT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise DataError(f"the output's extension must be one of {', '.join(OUTPUT_SUFFIXES)}", file=path)


class JsonlWriter:
    def __init__(self, path: Path, gz: bool = False):
        self._file = gzip.open(path, "wb") if gz else open(path, "wb", buffering=1 << 20)
        self.rows = 0

    def write(self, line: bytes, row: dict | None = None) -> None:
        self._file.write(line + b"\n")
        self.rows += 1

    def close(self) -> None:
        self._file.close()


class JsonArrayWriter:
    """A top-level JSON array with one row per line, written as it goes."""

    def __init__(self, path: Path):
        self._file = open(path, "wb", buffering=1 << 20)
        self._file.write(b"[")
        self.rows = 0

    def write(self, line: bytes, row: dict | None = None) -> None:
        self._file.write(b"\n" + line if self.rows == 0 else b",\n" + line)
        self.rows += 1

    def close(self) -> None:
        self._file.write(b"\n]\n")
        self._file.close()


class ParquetWriter:
    """Rows in batches; the first batch fixes the schema and later batches are cast to it."""

    BATCH = 8192

    def __init__(self, path: Path):
        self.path, self._batch, self._writer, self.rows = path, [], None, 0

    def write(self, line: bytes, row: dict | None = None) -> None:
        self._batch.append(row if row is not None else json.loads(line))
        self.rows += 1
        if len(self._batch) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._batch:
            return
        try:
            table = pa.Table.from_pylist(self._batch)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.path, table.schema)
            elif table.schema != self._writer.schema:
                table = pa.Table.from_pylist(self._batch, schema=self._writer.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"rows near row {self.rows} do not fit one parquet schema ({exc}); write .jsonl "
                            f"instead", file=self.path) from None
        self._writer.write_table(table)
        self._batch = []

    def close(self) -> None:
        self._flush()
        if self._writer is None:  # no rows: still write a valid, empty file
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({}), self.path)
        else:
            self._writer.close()


def open_writer(path: Path, kind: str):
    if kind == ".parquet":
        return ParquetWriter(path)
    if kind == ".json":
        return JsonArrayWriter(path)
    return JsonlWriter(path, gz=kind == ".jsonl.gz")
