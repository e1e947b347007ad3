"""Turn the data sources named by a recipe into a datasets.Dataset of canonical rows, with a content fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from dpo_cli.core import console
from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import KINDS


def load_training_data(sources: str | Any | Sequence[Any], kind: str = "preference"):
    """Read, check and convert every row; return ``(dataset, fingerprint)``.

    ``sources`` are paths (files, directories, globs, ``builtin:`` names) or objects
    ``{path, format, columns, where, limit}``. ``kind`` is what the stage needs: ``preference`` (TRL pairs), ``kto``
    (unpaired; pairs are split), ``prompt`` (prompt-only plus extra columns) or ``sft`` (conversations).
    The fingerprint is a SHA-256 over the canonical rows, so it names the data the trainer saw whatever the source
    format was.
    """
    if kind not in KINDS:
        raise DataError(f"unknown data kind '{kind}'{did_you_mean(kind, KINDS)}")
    if isinstance(sources, (str, Source)) or hasattr(sources, "keys"):
        sources = [sources]
    pipeline = RowPipeline(KINDS[kind])
    digest = hashlib.sha256()
    rows: list[dict] = []
    columns: tuple | None = None
    for source in map(Source.of, sources):
        for record, row in pipeline.rows(source):
            keys = tuple(row)
            if columns is None:
                columns = keys
            elif keys != columns and set(keys) != set(columns):
                raise DataError(f"this row has columns ({', '.join(keys)}) but earlier rows have "
                                f"({', '.join(columns)}); one dataset cannot mix them",
                                file=record.file, line=record.line)
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
            rows.append(row)
    if not rows:
        names = ", ".join(str(Source.of(s).path) for s in sources)
        raise DataError(f"no {kind} rows (every row was filtered out, or the files are empty)", file=names)
    from datasets import Dataset

    return Dataset.from_list(rows), digest.hexdigest()


def load_splits(data, seed: int, kind: str):
    """A recipe's data: section as (train, eval or None, what run.json records about them).

    The eval split is data.eval's files, or data.eval_split of the training rows drawn with ``seed`` (the same split
    again for a later ``dpo-cli eval`` of the run).
    """
    train, train_fp = load_training_data(data.train, kind)
    info = {"train": {"files": data.train, "rows": len(train), "fingerprint": train_fp}}
    evaluation = None
    if data.eval:
        evaluation, eval_fp = load_training_data(data.eval, kind)
        if eval_fp == train_fp:
            console.warn("data.eval holds the same rows as data.train: the held-out figures will measure how well "
                         "the training pairs were learned, not how the model does on pairs it has not seen")
        info["eval"] = {"files": data.eval, "rows": len(evaluation), "fingerprint": eval_fp}
    elif data.eval_split:
        parts = train.train_test_split(test_size=data.eval_split, seed=seed)
        train, evaluation = parts["train"], parts["test"]
        info["eval"] = {"split_of_train": data.eval_split, "rows": len(evaluation)}
        info["train"]["rows"] = len(train)
    return train, evaluation, info
