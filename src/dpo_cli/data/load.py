"""Turn the data files named by a recipe into a datasets.Dataset of canonical rows, with a content fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from ..errors import DataError
from ..tiny import resolve_builtin
from .formats import ADAPTERS
from .readers import Record, iter_records

__all__ = ["Record", "iter_records", "load_training_data"]


def load_training_data(paths: Sequence[str], kind: str = "preference"):
    """Read, check and convert every row; return ``(dataset, fingerprint)``.

    The fingerprint is a SHA-256 over the canonical rows, so it names the data the trainer saw whatever the source
    format was.
    """
    from datasets import Dataset

    adapter = ADAPTERS[kind]
    digest = hashlib.sha256()
    rows = []
    for path in paths:
        for record in iter_records(resolve_builtin(path)):
            row = adapter(record)
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
            rows.append(row)
    if not rows:
        raise DataError("no rows", file=", ".join(paths))
    return Dataset.from_list(rows), digest.hexdigest()
