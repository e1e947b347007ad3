"""`dpo-cli convert-data`: stream rows from the inputs to one canonical output file, checked, filtered, atomic."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_cli.core.atomic import atomic_path
from dpo_cli.core.errors import DataError, DpoCliError, InputError, did_you_mean
from dpo_cli.core.paths import check_output_file
from dpo_cli.data.checks import reject_record
from dpo_cli.data.formats import AdapterOptions
from dpo_cli.data.images import for_output
from dpo_cli.data.rows import RowPipeline, Source, Stats
from dpo_cli.data.targets import TARGETS
from dpo_cli.data.writers import dumps, open_writer, output_kind


@dataclass
class ConvertOptions:
    inputs: list[str]  # files, directories or globs; empty with a registry entry
    output: Path
    format: str | None = None
    to: str = "trl"
    columns: dict[str, str] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)
    where: str | None = None
    limit: int | None = None
    shuffle: bool = False
    seed: int = 42
    dedupe: bool = False
    eval_split: float | None = None
    skip_invalid: bool = False
    rejects: Path | None = None
    force: bool = False
    preference: str | None = None  # None: the format's default, and no error on other formats
    pairs: str | None = None
    allow_empty: bool = False
    registry: str | None = None  # a LLaMA-Factory dataset_info.json, with name: read that entry
    name: str | None = None

    def sources(self) -> list[Source]:
        common = {"where": self.where}
        if self.registry is None:
            return [Source(path=spec, format=self.format, columns=self.columns, **common) for spec in self.inputs]
        return [Source.of({"registry": self.registry, "name": self.name, **common})]


@dataclass
class ConvertSummary:
    output: Path
    eval_output: Path | None
    written: int
    eval_written: int
    duplicates: int
    seconds: float
    stats: Stats
    rejects: Path | None = None

    @property
    def rows_per_second(self) -> float:
        return self.stats.read / self.seconds if self.seconds > 0 else float("inf")


def parse_map(items: list[str]) -> dict[str, str]:
    """``--map prompt=question`` -> {"prompt": "question"}. Any name may be given, as a recipe source's ``columns:``
    takes any: prompt-only rows keep extra columns (``--map answer=reward_model.ground_truth`` for a reward
    function), and a name the detected format does not read is listed under *columns not used*."""
    out = {}
    for item in items:
        target, sep, column = item.partition("=")
        if not sep or not target.strip() or not column.strip():
            raise InputError(f"--map '{item}' must be CANONICAL=COLUMN, for example --map prompt=question")
        out[target.strip()] = column.strip()
    return out


def eval_path_for(output: Path) -> Path:
    """out.jsonl -> out.eval.jsonl (the extension, gz included, stays last)."""
    kind = output_kind(output)
    return output.with_name(output.name[: -len(kind)] + ".eval" + kind)


def _check_outputs(options: ConvertOptions, sources: list[Source], outputs: list[tuple[str, Path]]) -> None:
    for i, (_, out) in enumerate(outputs):
        for _, other in outputs[:i]:
            if out.resolve() == other.resolve():
                raise InputError(f"{out} is named for two outputs (--output, its .eval split, --rejects); each "
                                 f"needs a file of its own")
    # the files read (a folder given as input may hold the output, as before), and the registry that named them
    inputs = [p for source in sources for p in source.local_files()]
    inputs += [options.registry] if options.registry else []
    for what, out in outputs:
        check_output_file(out, inputs, what=what, force=options.force)


def _validate(options: ConvertOptions) -> None:
    if options.to not in TARGETS:
        raise InputError(f"--to '{options.to}' is not an output shape{did_you_mean(options.to, TARGETS)}")
    if options.limit is not None and options.limit <= 0:
        raise InputError("--limit must be a positive number of rows")
    if options.eval_split is not None and not 0.0 < options.eval_split < 1.0:
        raise InputError("--eval-split must be a fraction between 0 and 1, such as 0.05")
    if options.rejects is not None and not options.skip_invalid:
        raise InputError("--rejects only applies with --skip-invalid (without it the first bad row stops)")
    if (options.registry is None) != (options.name is None):
        raise InputError("--registry and --name go together: the dataset_info.json and the entry to read")
    if options.registry is not None and (options.inputs or options.format or options.columns):
        raise InputError("with --registry the entry names the file, its format and its columns; drop the INPUT "
                         "paths, --format and --map")
    if options.registry is None and not options.inputs:
        raise InputError("name the input files, or a LLaMA-Factory registry entry with --registry FILE --name NAME")


class _Spool:
    """Rows written to a temporary jsonl beside the output, with their offsets, so shuffling and splitting need
    memory for one offset per row rather than for the rows."""

    def __init__(self, directory: Path):
        fd, name = tempfile.mkstemp(prefix=".dpo-cli-spool.", suffix=".jsonl", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self.offsets = array("Q")
        self._position = 0

    def write(self, line: bytes, row: dict | None = None) -> None:
        self.offsets.append(self._position)
        self._file.write(line + b"\n")
        self._position += len(line) + 1

    def __len__(self) -> int:
        return len(self.offsets)

    def replay(self, order: Any):
        self._file.close()
        with open(self.path, "rb") as f:
            if order is None:
                for line in f:
                    yield line[:-1]
            else:
                for index in order:
                    f.seek(self.offsets[index])
                    yield f.readline()[:-1]

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def convert(options: ConvertOptions) -> ConvertSummary:
    """Run one conversion; raises DataError at the first bad row unless ``skip_invalid``."""
    _validate(options)
    started = time.perf_counter()
    output = Path(options.output)
    kind = output_kind(output)
    eval_output = eval_path_for(output) if options.eval_split else None
    outputs = [("--output", output)] + ([("the --eval-split output", eval_output)] if eval_output else []) + \
        ([("--rejects", Path(options.rejects))] if options.rejects else [])
    sources = options.sources()
    _check_outputs(options, sources, outputs)

    with _writing([path for _, path in outputs]), contextlib.ExitStack() as stack:
        rejects_writer = None
        if options.rejects is not None:
            rejects_tmp = stack.enter_context(atomic_path(options.rejects))
            rejects_writer = open_writer(rejects_tmp, output_kind(options.rejects))
            stack.callback(rejects_writer.close)

        def on_reject(error: DataError, row: dict | None) -> None:
            if rejects_writer is not None:
                rejects_writer.write(dumps(reject_record(error, row)))

        pipeline = RowPipeline(TARGETS[options.to], AdapterOptions(preference=options.preference, pairs=options.pairs),
                            keep=options.keep, skip_invalid=options.skip_invalid, on_reject=on_reject,
                            count_languages=True)
        tmp = stack.enter_context(atomic_path(output))
        spooled = options.shuffle or options.eval_split is not None
        if spooled:
            spool = _Spool(output.parent)
            stack.callback(spool.remove)
            sink: Any = spool
        else:
            sink = open_writer(tmp, kind)
        seen: set[bytes] | None = set() if options.dedupe else None
        duplicates = written = 0
        limit = options.limit
        for source in sources:
            for _record, row in pipeline.rows(source):
                if row.get("images") is not None:  # kept valid where the output is read: never copied
                    row = {**row, "images": for_output(row["images"], output.parent)}
                line = dumps(row)
                if seen is not None:
                    key = hashlib.blake2b(line, digest_size=16).digest()
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                sink.write(line, row)
                written += 1
                if limit is not None and written >= limit:
                    break
            if limit is not None and written >= limit:
                break
        if written == 0 and not options.allow_empty:  # raised inside the stack: no output file is left behind
            raise InputError(_nothing_written(pipeline.stats, duplicates))
        eval_written = 0
        if spooled:
            eval_written, written = _write_spooled(spool, options, tmp, kind, eval_output, stack)
        else:
            sink.close()
    return ConvertSummary(output=output, eval_output=eval_output, written=written, eval_written=eval_written,
                          duplicates=duplicates, seconds=time.perf_counter() - started, stats=pipeline.stats,
                          rejects=options.rejects)


@contextlib.contextmanager
def _writing(outputs: list[Path]) -> Iterator[None]:
    """An OSError while converting as one line, once the temporary files are gone: the output that could not be
    written (a read-only directory: exit 2; a full disk: exit 1), or the input that could not be read."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        name = Path(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
        ours = [out for out in outputs if name is not None and name.parent.resolve() == out.parent.resolve()
                and (name.name == out.name or name.name.startswith(f".{out.name}.") or name.name.startswith(
                    ".dpo-cli-spool."))]
        # a folder above an output that could not be made is the output's failure too
        if name is not None and not ours and not any(out.resolve().is_relative_to(name.resolve()) for out in outputs):
            raise InputError(f"{name}: cannot be read ({reason})") from None
        failed = DpoCliError if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG) else InputError
        target = (ours or outputs)[0] if name is not None or len(outputs) == 1 else ", ".join(map(str, outputs))
        raise failed(f"cannot write {target}: {reason}; no output was written") from None


def _nothing_written(stats: Stats, duplicates: int) -> str:
    reasons = [f"{stats.read:,} rows read"]
    if stats.filtered:
        reasons.append(f"{stats.filtered:,} filtered out by --where")
    reasons += [f"{n:,} {what}" for what, n, _, _ in stats.findings() if what.startswith(("dropped", "left out"))]
    if duplicates:
        reasons.append(f"{duplicates:,} duplicates")
    return f"no rows to write ({'; '.join(reasons)}); pass --allow-empty to write an empty file anyway"


def _write_spooled(spool: _Spool, options: ConvertOptions, tmp: Path, kind: str, eval_output: Path | None,
                   stack: contextlib.ExitStack) -> tuple[int, int]:
    rng = random.Random(options.seed)
    n = len(spool)
    order = None
    if options.shuffle:
        order = array("Q", range(n))
        rng.shuffle(order)
    eval_positions: set[int] = set()
    if options.eval_split is not None and n:
        count = min(n - 1, max(1, round(n * options.eval_split))) if n > 1 else 0
        eval_positions = set(rng.sample(range(n), count))
    train_writer = open_writer(tmp, kind)
    eval_writer = None
    if eval_output is not None:
        eval_tmp = stack.enter_context(atomic_path(eval_output))
        eval_writer = open_writer(eval_tmp, kind)
    for position, line in enumerate(spool.replay(order)):
        if position in eval_positions:
            eval_writer.write(line)
        else:
            train_writer.write(line)
    train_writer.close()
    if eval_writer is not None:
        eval_writer.close()
    return (eval_writer.rows if eval_writer else 0), train_writer.rows


def print_summary(console, summary: ConvertSummary) -> None:
    """The end-of-run summary: rows read, written, dropped, warned and left out with their first places, unused
    columns, languages, time."""
    from rich.table import Table

    stats = summary.stats
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    formats = sorted(set(stats.formats.values()))
    table.add_row("format", ", ".join(formats) if formats else "-")
    table.add_row("rows read", f"{stats.read:,}")
    if stats.filtered:
        table.add_row("filtered out (--where)", f"{stats.filtered:,}")
    table.add_row("written", f"{summary.written:,} -> {summary.output}")
    if summary.eval_output is not None:
        table.add_row("eval split", f"{summary.eval_written:,} -> {summary.eval_output}")
    if summary.duplicates:
        table.add_row("duplicates removed", f"{summary.duplicates:,}")
    print_findings(table, stats)
    if summary.rejects is not None and stats.dropped:
        table.add_row("rejected rows", str(summary.rejects))
    if stats.languages:
        mix = ", ".join(f"{lang} {n:,}" for lang, n in stats.languages.most_common(8))
        table.add_row("languages", mix + (" (guessed from the script)" if stats.languages_guessed else ""))
    table.add_row("time", f"{summary.seconds:.2f} s, {summary.rows_per_second:,.0f} rows/s")
    console.print(table)


def print_findings(table, stats: Stats) -> None:
    """One row per finding, then its first places (``file:line: field 'x': reason``), as inspect-data prints them.
    Plain text, never markup: a reason may hold brackets."""
    from rich.text import Text

    for what, count, meaning, places in stats.findings():
        table.add_row(what, Text(f"{count:,} ({meaning})"))
        for place in places:
            table.add_row("", Text(f"  {place}"))
