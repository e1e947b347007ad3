"""Datasets on the Hugging Face Hub (or local folders laid out like a Hub dataset repo), read with `datasets`."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dpo_cli.core.errors import DataError

PREFIX = "hub:"
HUB_KEYS = ("hub", "config", "split", "revision", "data_files", "data_dir")
_COMMIT = re.compile(r"@([0-9a-f]{40})/")


@dataclass(frozen=True)
class HubSpec:
    """What ``datasets.load_dataset`` is asked for: a dataset id (or a local hub-style folder) and which part."""

    id: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    data_files: Any = None  # a file, a list, or {split: files}, as load_dataset takes it
    data_dir: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubSpec:
        """``hub:ORG/NAME`` (split train) or ``hub:ORG/NAME@SPLIT``."""
        name = text[len(PREFIX):] if text.startswith(PREFIX) else text
        name, _, split = name.partition("@")
        if not name or "@" in split:
            raise DataError(f"'{text}' is not a hub dataset name: write hub:ORG/NAME or hub:ORG/NAME@SPLIT")
        return cls(name, split=split or "train")

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> HubSpec:
        return cls(str(value["hub"]), config=value.get("config"), split=str(value.get("split") or "train"),
                   revision=value.get("revision"), data_files=value.get("data_files"), data_dir=value.get("data_dir"))

    @property
    def label(self) -> str:
        """How messages name this source (in place of a file name)."""
        return f"{PREFIX}{self.id}" + (f"[{self.config}]" if self.config else "") + f"@{self.split}"

    def record(self, revision: str | None) -> dict[str, Any]:
        """What run.json keeps of the source: the id, config and split, and the commit it resolved to."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if revision:
            out["resolved_revision"] = revision
        return out


def is_hub(text: str) -> bool:
    return text.startswith(PREFIX)


def open_dataset(spec: HubSpec):
    """``(dataset, resolved commit or None)``: the split memory-mapped from datasets' own cache, which also serves
    a machine that is offline once the dataset is there. A name neither cached nor reachable is a DataError."""
    import datasets

    local = os.path.isdir(spec.id)  # a folder laid out like a Hub repo: nothing to download, no progress to show
    bars = datasets.is_progress_bar_enabled()
    try:
        if local:
            datasets.disable_progress_bars()
        builder = datasets.load_dataset_builder(spec.id, spec.config, data_dir=spec.data_dir,
                                                data_files=spec.data_files, revision=spec.revision)
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=spec.split)
    except (ConnectionError, FileNotFoundError) as exc:
        # datasets' DatasetNotFoundError is a FileNotFoundError; offline, a name not in the cache is a ConnectionError
        offline = "offline" in str(exc).lower() or isinstance(exc, ConnectionError)
        raise DataError("not in the datasets cache and the Hub cannot be reached (offline); run once where the Hub "
                        "is reachable, or give a local path" if offline else
                        "no such dataset on the Hub (or it is private: log in with hf auth login)",
                        file=spec.label) from None
    except ValueError as exc:  # an unknown config or split: datasets names what there is
        raise DataError(str(exc).splitlines()[0], file=spec.label) from None
    finally:
        if local and bars:
            datasets.enable_progress_bars()
    return dataset, _commit(builder)


def _commit(builder) -> str | None:
    """The commit the Hub resolved the data files to (their hf:// URLs carry it); None for a local folder."""
    files = builder.config.data_files or {}
    for urls in files.values():
        for url in urls:
            match = _COMMIT.search(str(url))
            if match:
                return match.group(1)
    return None


def rows(dataset) -> Iterator[dict[str, Any]]:
    """The dataset's rows as plain Python values, a batch of Arrow at a time (images stay their stored structs)."""
    for table in dataset.with_format("arrow").iter(batch_size=2048):
        yield from table.to_pylist()


def cache_files(dataset) -> list[str]:
    """The Arrow files datasets keeps the split in: they change when the source or its revision does."""
    return [f["filename"] for f in dataset.cache_files]
