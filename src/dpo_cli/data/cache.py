"""Canonical rows prepared once: written as an Arrow file under a key of everything they depend on, memory-mapped.

A key covers the dpo-cli version, the data kind, every source option and the sources' content (a digest of each
local file; for a Hub dataset the Arrow files datasets keeps it in, which change with its revision). A run whose key
is prepared reads no source row: it maps the Arrow file, and since the file's path names the same dataset
fingerprint every time, TRL's tokenization (``Dataset.map``) finds its own cache files beside it.

Rows are written in two passes so memory stays flat in the row count: canonical rows stream to a JSON-lines file
while their Arrow types are inferred a batch at a time, then the file is read back in batches into Arrow with the
types of all rows. Message columns holding tool calls or reasoning, and ``tools``, are stored as JSON: Arrow would
merge every row's tool arguments into one struct and fill the keys a row lacks with nulls, changing what the chat
template renders.

Images are stored as ``datasets.Image()`` values (``{"bytes", "path"}``, an absolute path for a file), so rows read
back decode to PIL images. The key cannot name the image files (only the rows do), so prepared rows with images
keep each image file's path, size and modification time, and are prepared again when any of them changed or went:
a stat per image on a prepared run, no re-reading of their bytes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.errors import DataError

MESSAGE_COLUMNS = ("prompt", "chosen", "rejected", "completion", "messages")  # may carry tool calls or reasoning
JSON_COLUMNS = ("tools",)  # always JSON; a row without tools reads them as none
# datasets.Image() values: a list of them, or one (a prompt's only image, as TRL's OnlineDPOTrainer reads it)
IMAGE_COLUMNS = ("images", "image")
BATCH = 4096
ROWS, META = "rows.arrow", "meta.json"


def _dpo_cli_version() -> str:
    try:
        return version("dpo-cli")
    except PackageNotFoundError:  # running from a source tree without an install
        return "source"


def _file_digest(path: Path, memo: Path | None = None) -> str:
    """SHA-256 of a file's bytes, remembered under ``memo`` for the file as it is now: the same inode with the same
    size, modification and change times (the change time moves on every write and cannot be set back), so a sweep's
    next point does not read hundreds of megabytes again to learn they did not change."""
    remembered = None
    if memo is not None:
        stat = path.stat()
        now = f"{path.resolve()}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
        remembered = memo / hashlib.sha256(now.encode()).hexdigest()
        with contextlib.suppress(OSError):
            found = remembered.read_text(encoding="ascii")
            if len(found) == 64:
                return found
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    if remembered is not None:
        with contextlib.suppress(OSError):  # a read-only cache folder only costs the next read
            memo.mkdir(parents=True, exist_ok=True)
            atomic_write_text(remembered, digest.hexdigest())
    return digest.hexdigest()


def _content(path: Path, memo: Path | None) -> list:
    """What the rows of one named file (or save_to_disk folder) depend on: its bytes."""
    if path.is_dir():
        return [[str(p.relative_to(path)), _file_digest(p, memo)] for p in sorted(path.rglob("*")) if p.is_file()]
    return [path.stat().st_size, _file_digest(path, memo)]


# the source options that name a local path (a glob in path resolves too: only its directory part changes)
LOCAL_PATHS = ("path", "rejects", "registry", "media_dir")


def key(sources: list, kind: str, memo: Path | None = None) -> str:
    """The cache key of canonical rows of ``kind`` read from ``sources`` (data.rows.Source objects); ``memo`` keeps
    the digests of files as they are now (see _file_digest)."""
    from dpo_cli.data import hub

    described = []
    for source in sources:
        options = {k: v for k, v in asdict(source).items() if v not in (None, {}, False)}
        if source.hub is not None:
            dataset, revision = hub.open_dataset(source.hub)
            content: Any = [revision, hub.cache_files(dataset)]
        else:  # a file named relatively or absolutely, from any directory, is one source: its rows are prepared once
            options.update({k: str(Path(options[k]).resolve()) for k in LOCAL_PATHS if k in options})
            content = [[str(p.resolve()), _content(p, memo)] for p in source.local_files()]
        described.append([options, content])
    text = json.dumps({"dpo-cli": _dpo_cli_version(), "kind": kind, "sources": described}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(directory: Path) -> tuple[Any, dict] | None:
    """``(dataset, meta)`` of prepared rows, memory-mapped; None when nothing complete is there."""
    if not (directory / META).is_file():
        return None
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if any(not Path(path).exists() for path in meta.get("rejects", [])):
        return None  # its bad rows were written to a file that is gone: read the sources again to write it
    from dpo_cli.data.images import stamp

    if any(stamp(path) != [size, mtime] for path, size, mtime in meta.get("image_files", [])):
        return None  # an image file changed or went since the rows were prepared
    from datasets import Dataset

    return Dataset.from_file(str(directory / ROWS)), meta


def discard(directory: Path) -> None:
    """Remove prepared rows that are out of date (renamed away first, so no reader sees half a folder)."""
    if not directory.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}-stale-", dir=directory.parent))
    try:
        os.rename(directory, trash / directory.name)
    except OSError:  # another process discarded or replaced it first
        pass
    shutil.rmtree(trash, ignore_errors=True)


def _unify(column: str, known, found):
    import pyarrow as pa

    if known is None or known == found:
        return found
    try:
        return pa.unify_schemas([pa.schema([(column, known)]), pa.schema([(column, found)])],
                                promote_options="permissive").field(column).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        raise DataError(f"column '{column}' holds {known} in some rows and {found} in others; one dataset needs "
                        f"one type per column") from None


def _unspooled(refs: list[dict] | None) -> list[dict] | None:
    if refs is None:
        return None
    return [{"bytes": base64.b64decode(r["bytes"]) if r["bytes"] is not None else None, "path": r["path"]}
            for r in refs]


def _has_extras(value: Any) -> bool:
    return type(value) is list and any(type(m) is dict and len(m) != 2 for m in value)


class Writer:
    """Streams canonical rows into ``directory``: ``add`` each row, then ``finish`` writes the Arrow file."""

    def __init__(self, directory: Path):
        import orjson

        self._dumps = orjson.dumps
        self.directory = directory
        self._lines = open(directory / "rows.jsonl", "wb")
        self.columns: dict[str, None] = {}  # every column any row has, in first-seen order
        self.json_columns: set[str] = set()
        self.types: dict[str, Any] = {}
        self._batch: list[dict] = []
        self.rows = 0
        self.image_files: dict[str, list[int] | None] = {}  # path -> (size, mtime) of every image file named

    def add(self, row: dict) -> None:
        for name in row:
            if name not in self.columns:
                self.columns[name] = None
                if name in JSON_COLUMNS:
                    self.json_columns.add(name)
        for name in MESSAGE_COLUMNS:
            if name not in self.json_columns and _has_extras(row.get(name)):
                self.json_columns.add(name)
        if any(row.get(name) for name in IMAGE_COLUMNS):
            row = {**row, **{name: self._spooled(row[name]) if name == "images" else self._spooled([row[name]])[0]
                             for name in IMAGE_COLUMNS if row.get(name)}}
        self._lines.write(self._dumps(row))
        self._lines.write(b"\n")
        self._batch.append(row)
        self.rows += 1
        if len(self._batch) == BATCH:
            self._infer()

    def _spooled(self, refs: list[dict]) -> list[dict]:
        """Image references as the JSON spool holds them (bytes as base64), their files' stamps noted."""
        from dpo_cli.data.images import stamp

        out = []
        for ref in refs:
            if ref.get("bytes") is not None:
                out.append({"bytes": base64.b64encode(ref["bytes"]).decode("ascii"), "path": None})
            else:
                if ref["path"] not in self.image_files:
                    self.image_files[ref["path"]] = stamp(ref["path"])
                out.append({"bytes": None, "path": ref["path"]})
        return out

    def _infer(self) -> None:
        """Fold one batch's Arrow types into the types seen so far (JSON columns are JSON whatever they hold)."""
        import pyarrow as pa

        batch = self._batch
        skipped = self.json_columns.union(IMAGE_COLUMNS)  # typed by their features, not inferred
        batch = [{k: v for k, v in row.items() if k not in skipped} for row in batch]
        try:
            schema = pa.Table.from_pylist(batch).schema
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"rows hold values of different types in one column ({exc})") from None
        for field in schema:
            self.types[field.name] = _unify(field.name, self.types.get(field.name), field.type)
        self._batch = []

    def features(self):
        """The datasets Features of every row: inferred Arrow types, JSON where rows carry free-form objects."""
        import pyarrow as pa
        from datasets import Features

        if self.json_columns:
            try:
                from datasets import Json, List
            except ImportError:
                raise DataError("rows with tool calls or tools need a datasets release with datasets.Json; "
                                "upgrade it with pip install -U datasets") from None
        out = {}
        for name in self.columns:
            if name in IMAGE_COLUMNS:
                from datasets import Image, Sequence

                out[name] = Sequence(Image()) if name == "images" else Image()
            elif name in self.json_columns:
                out[name] = Json() if name in JSON_COLUMNS else List(Json())
            else:
                out[name] = Features.from_arrow_schema(pa.schema([(name, self.types.get(name, pa.null()))]))[name]
        return Features(out)

    def finish(self) -> None:
        import orjson
        import pyarrow as pa
        from datasets import Dataset, Features

        if self._batch:
            self._infer()
        self._lines.close()
        features = self.features()
        schema = features.arrow_schema
        json_features = Features({name: features[name] for name in self.columns
                                  if name in self.json_columns or name in IMAGE_COLUMNS})
        lines = self.directory / "rows.jsonl"
        with open(lines, "rb") as f, pa.OSFile(str(self.directory / ROWS), "wb") as sink, \
                pa.ipc.new_stream(sink, schema) as stream:
            while batch := [orjson.loads(line) for _, line in zip(range(BATCH), f)]:
                columns = {name: [row.get(name) for row in batch] for name in self.columns}
                for name in IMAGE_COLUMNS:
                    if name in columns:
                        columns[name] = [_unspooled(refs) for refs in columns[name]] if name == "images" else \
                            [ref and _unspooled([ref])[0] for ref in columns[name]]
                # Arrow converts plain values itself; only JSON columns need datasets' (Python) encoding
                encoded = Dataset.from_dict({name: columns[name] for name in json_features},
                                            features=json_features).data.table if json_features else None
                arrays = [encoded.column(name) if name in json_features else pa.array(columns[name], type=field.type)
                          for name, field in zip(self.columns, schema)]
                stream.write_table(pa.Table.from_arrays(arrays, schema=schema))
        lines.unlink()

    def manifest(self) -> list[list]:
        """``[path, size, mtime]`` of each image file the rows name, for ``load`` to check (a file gone at preparing
        time never gets here: its row was refused)."""
        return [[path, *found] for path, found in self.image_files.items() if found is not None]

    def abandon(self) -> None:
        self._lines.close()


@contextlib.contextmanager
def preparing(root: Path, name: str) -> Iterator[tuple[Writer, dict]]:
    """A Writer into a fresh folder and the meta dict to fill; on success the folder becomes ``root/name`` at once
    (another process that got there first wins, and its copy is kept). On failure nothing is left."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    writer = Writer(scratch)
    meta: dict = {}
    try:
        yield writer, meta
        writer.finish()
        (scratch / META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        try:
            os.rename(scratch, root / name)
        except OSError:  # prepared meanwhile by another process (a second node on shared storage)
            if not (root / name / META).is_file():
                raise
    finally:
        writer.abandon()
        shutil.rmtree(scratch, ignore_errors=True)
