"""Turn the data sources named by a recipe into a datasets.Dataset of canonical rows, with a content fingerprint."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dpo_cli.core import console
from dpo_cli.core.atomic import atomic_path
from dpo_cli.core.builtins import cache_home
from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.data import cache, hub
from dpo_cli.data.checks import reject_record
from dpo_cli.data.images import file_digest
from dpo_cli.data.readers import Record
from dpo_cli.data.rows import RECIPE_KEYS, RowPipeline, Source, Stats
from dpo_cli.data.targets import KINDS
from dpo_cli.data.writers import dumps, open_writer, output_kind


def _as_sources(sources: Any) -> list[Source]:
    if isinstance(sources, (str, Source)) or hasattr(sources, "keys"):
        sources = [sources]
    return [Source.of(s) for s in sources]


@contextlib.contextmanager
def _rejects_writer(source: Source, write: bool) -> Iterator[Any]:
    """The on_reject callback of a source: its bad rows, with check, field and reason, go to its rejects file."""
    if source.rejects is None or not write:
        yield None
        return
    with atomic_path(source.rejects) as tmp:
        writer = open_writer(tmp, output_kind(Path(source.rejects)))
        try:
            yield lambda error, row: writer.write(dumps(reject_record(error, row)))
        finally:
            writer.close()


def _pipeline(kind: str) -> RowPipeline:
    if kind not in KINDS:
        raise DataError(f"unknown data kind '{kind}'{did_you_mean(kind, KINDS)}")
    return RowPipeline(KINDS[kind], words=RECIPE_KEYS)


def _stream(pipeline: RowPipeline, sources: Any, write_rejects: bool = True) -> Iterator[tuple[Record, dict]]:
    """Every canonical row of the sources, streamed, each source with its own skip_invalid and rejects file; what
    happened to the rows is in ``pipeline.stats`` afterwards."""
    for source in _as_sources(sources):
        with _rejects_writer(source, write_rejects) as on_reject:
            pipeline.skip_invalid, pipeline.on_reject = source.skip_invalid, on_reject
            yield from pipeline.rows(source)


def _no_rows(kind: str, where: str) -> DataError:
    return DataError(f"no {kind} rows (every row was filtered out, dropped or left out, or the files are empty)",
                     file=where)


def _checked(pipeline: RowPipeline, sources: Any, digest, write_rejects: bool = True) -> Iterator[dict]:
    """The canonical rows of the sources, each added to ``digest`` (the data's fingerprint); rows whose columns
    differ from the first row's are refused (one dataset cannot mix them)."""
    columns: set | None = None
    for record, row in _stream(pipeline, sources, write_rejects):
        keys = set(row).difference(cache.JSON_COLUMNS)  # a row without tools reads them as none
        if columns is None:
            columns = keys
        elif keys != columns:
            raise DataError(f"this row has columns ({', '.join(sorted(keys))}) but earlier rows have "
                            f"({', '.join(sorted(columns))}); one dataset cannot mix them",
                            file=record.file, line=record.line)
        if row.get("images") or row.get("image"):  # an image is in the fingerprint by its bytes, wherever it is
            fingerprinted = {**row}
            if row.get("images"):
                fingerprinted["images"] = [file_digest(ref).hex() for ref in row["images"]]
            if row.get("image"):
                fingerprinted["image"] = file_digest(row["image"]).hex()
            digest.update(json.dumps(fingerprinted, ensure_ascii=False, sort_keys=True).encode())
        else:
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
        yield row


def _prepare(sources: list[Source], kind: str, root: Path) -> tuple[Any, dict]:
    """(dataset, meta): the canonical rows as a memory-mapped Arrow dataset, read from the sources only when
    ``root`` does not hold them prepared already."""
    name = cache.key(sources, kind, memo=root / ".digests")
    found = cache.load(root / name)
    if found is not None:
        return found
    cache.discard(root / name)  # out of date (an image changed, a rejects file went): prepared again in its place
    pipeline = _pipeline(kind)
    digest = hashlib.sha256()
    with cache.preparing(root, name) as (writer, meta):
        for row in _checked(pipeline, sources, digest):
            writer.add(row)
        if writer.rows == 0:
            raise _no_rows(kind, ", ".join(str(s.path) for s in sources))
        meta.update(fingerprint=digest.hexdigest(), rows=writer.rows, stats=pipeline.stats.to_json(),
                    rejects=[s.rejects for s in sources if s.rejects and s.skip_invalid])
        if writer.image_files:
            meta["image_files"] = writer.manifest()
        hubs = [s.hub.record(hub.open_dataset(s.hub)[1]) for s in sources if s.hub is not None]
        if hubs:
            meta["hub"] = hubs
    return cache.load(root / name)


def default_cache_dir() -> Path:
    return cache_home() / "data"


def _cache_dir(data) -> Path | None:
    """Where a recipe's data section keeps prepared rows; None for data.cache false."""
    return (Path(data.cache_dir) if data.cache_dir else default_cache_dir()) if data.cache else None


def _read(sources: Any, kind: str, cache_dir: Path | None) -> tuple[Any, dict]:
    if cache_dir is None:  # no cache wanted: the same files, in a folder of this process's own gone when it ends
        cache_dir = Path(tempfile.mkdtemp(prefix="dpo-cli-data-"))
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    return _prepare(_as_sources(sources), kind, cache_dir)


def load_training_data(sources: str | Any | Sequence[Any], kind: str = "preference",
                       cache_dir: str | Path | None = None):
    """Read, check and convert every row; return ``(dataset, fingerprint)``.

    ``sources`` are paths (files, directories, globs, ``builtin:`` names, ``hub:ORG/NAME[@SPLIT]``) or objects
    ``{path | hub | registry and name, format, columns, where, limit, skip_invalid, rejects, ...}``. ``kind`` is what
    the stage needs: ``preference`` (TRL pairs), ``kto`` (unpaired; pairs are split), ``prompt`` (prompt-only plus
    extra columns) or ``sft`` (conversations). The fingerprint is a SHA-256 over the canonical rows, so it names the
    data the trainer saw whatever the source format was. The rows are prepared once under ``cache_dir`` (default
    DPO_CLI_HOME/data) and memory-mapped.
    """
    dataset, meta = _read(sources, kind, Path(cache_dir) if cache_dir else default_cache_dir())
    return dataset, meta["fingerprint"]


def findings(stats: Stats) -> dict[str, dict[str, int]]:
    """What run.json records about rows and columns that did not reach the trainer as they were."""
    out = {"dropped": dict(stats.dropped), "left_out": dict(stats.omitted), "warnings": dict(stats.warned),
           "unused_columns": dict(stats.unused)}
    return {k: v for k, v in out.items() if v}


def say(split: str, stats: Stats) -> None:
    """Dropped rows, rows left out, warnings and unused columns, said once each: silence would lose them."""
    for what, count, meaning, places in stats.findings():
        where = ", ".join(places) if what == "columns not used" else f"first: {places[0]}" if places else ""
        message = f"{split} data: {what}: {count:,} ({meaning})" + (f"; {where}" if where else "")
        if what.startswith(("left out", "columns")):  # by design (SFT reading KTO rows, metadata): worth a note
            console.note(message)
        else:
            console.warn(message)


def _split_info(sources: list, kind: str, cache_dir: Path | None) -> tuple[Any, dict, Stats]:
    dataset, meta = _read(sources, kind, cache_dir)
    stats = Stats.from_json(meta["stats"])
    stats.words = RECIPE_KEYS
    info: dict[str, Any] = {"files": sources, "rows": meta["rows"], "fingerprint": meta["fingerprint"],
                            **findings(stats)}
    for name in ("hub", "rejects"):
        if meta.get(name):
            info[name] = meta[name]
    return dataset, info, stats


def load_splits(data, seed: int, kind: str, quiet: bool = False):
    """A recipe's data: section as (train, eval or None, what run.json records about them). ``quiet`` leaves the
    notes on dropped rows to another process (under several processes the main one says them).

    The rows are prepared once under data.cache_dir (default DPO_CLI_HOME/data) and memory-mapped; with data.cache
    false, in a folder of this process's own. The eval split is data.eval's files, or data.eval_split of the
    training rows drawn with ``seed`` (the same split again for a later ``dpo-cli eval`` of the run).
    """
    cache_dir = _cache_dir(data)
    train, train_info, stats = _split_info(data.train, kind, cache_dir)
    if not quiet:
        say("train", stats)
    info = {"train": train_info}
    evaluation = None
    if data.eval:
        evaluation, info["eval"], stats = _split_info(data.eval, kind, cache_dir)
        if not quiet:
            say("eval", stats)
            if info["eval"]["fingerprint"] == train_info["fingerprint"]:
                console.warn("data.eval holds the same rows as data.train: the held-out figures will measure how "
                             "well the training pairs were learned, not how the model does on pairs it has not seen")
    elif data.eval_split:
        parts = train.train_test_split(test_size=data.eval_split, seed=seed)
        train, evaluation = parts["train"], parts["test"]
        info["eval"] = {"split_of_train": data.eval_split, "rows": len(evaluation)}
        info["train"]["rows"] = len(train)
    return train, evaluation, info


def check_data(data, kind: str, visit: Callable[[dict], None] | None = None) -> dict[str, dict]:
    """Read and check every row of a recipe's data as training will, streaming and building no dataset, writing
    nothing (what --dry-run reports): per split the rows read, their fingerprint (as load_splits records it), the
    columns the dataset will have (what reward functions can read), and what was dropped, left out or unused. Rows
    already prepared under the same key were checked when they were prepared: their record is read instead
    (``prepared``). With data.eval_split, ``held_out`` is how many training rows the split will take (datasets'
    train_test_split: the share, rounded up). ``visit`` is called with every training row (a prepared row's images
    not decoded): measurements a dry run makes beside the checks."""
    out = {}
    for split, sources in (("train", data.train), ("eval", data.eval)):
        if sources:
            out[split] = _check_split(_as_sources(sources), kind, _cache_dir(data), split,
                                      visit if split == "train" else None)
    if data.eval_split and "train" in out:
        out["train"]["held_out"] = math.ceil(data.eval_split * out["train"]["rows"])
    return out


def _check_split(sources: list[Source], kind: str, cache_dir: Path | None, split: str,
                 visit: Callable[[dict], None] | None = None) -> dict:
    found = cache.load(cache_dir / cache.key(sources, kind)) if cache_dir is not None else None
    if found is not None:
        dataset, meta = found
        if visit is not None:
            # the images stay undecoded: a visitor reads the text and counts the images
            for row in dataset.remove_columns([c for c in cache.IMAGE_COLUMNS if c in dataset.column_names]):
                visit(row)
        return {"rows": meta["rows"], "fingerprint": meta["fingerprint"], "columns": dataset.column_names,
                "prepared": True, **findings(Stats.from_json(meta["stats"]))}
    pipeline = _pipeline(kind)
    digest = hashlib.sha256()
    rows, columns = 0, {}
    for row in _checked(pipeline, sources, digest, write_rejects=False):
        rows += 1
        if visit is not None:
            visit(row)
        columns.update(dict.fromkeys(row))  # in first-seen order, as the prepared rows order them
    if rows == 0:
        raise _no_rows(kind, f"data.{split}")
    return {"rows": rows, "fingerprint": digest.hexdigest(), "columns": list(columns), **findings(pipeline.stats)}
