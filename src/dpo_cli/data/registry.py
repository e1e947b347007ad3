"""LLaMA-Factory's dataset registry (dataset_info.json): one named entry -> how dpo-cli reads it (a local file or
the Hugging Face Hub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpo_cli.core.errors import DataError, did_you_mean
from dpo_cli.data.formats import registry_tags
from dpo_cli.data.hub import HubSpec

# LLaMA-Factory's column roles -> the column each format adapter reads, with LLaMA-Factory's defaults
_ALPACA = {"prompt": ("instruction", "instruction"), "query": ("input", "input"), "response": ("output", "output"),
           "history": ("history", None), "system": ("system", None), "tools": ("tools", None),
           "chosen": ("chosen", None), "rejected": ("rejected", None), "kto_tag": ("label", None),
           "images": ("images", None)}
_SHAREGPT = {"messages": ("conversations", "conversations"), "system": ("system", None), "tools": ("tools", None),
             "chosen": ("chosen", None), "rejected": ("rejected", None), "kto_tag": ("label", None),
           "images": ("images", None)}
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_MEDIA = ("videos", "audios")  # images are read (mllm entries); videos and audio are not
_ELSEWHERE = {"ms_hub_url": "ModelScope", "om_hub_url": "Modelers (openmind)",
              "script_url": "a loading script (datasets no longer runs them)", "cloud_file_name": "cloud storage"}
_KNOWN = {"file_name", "formatting", "ranking", "columns", "tags", "num_samples", "split", "subset", "folder",
          *_HUB_KEYS}


def read_registry(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError("dataset registry not found (a LLaMA-Factory dataset_info.json)", file=path)
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"not valid JSON: {exc}", file=path) from None
    if not isinstance(registry, dict):
        raise DataError("a dataset registry must be a JSON object of named entries", file=path)
    return registry


def registry_source(path: str, name: str) -> dict[str, Any]:
    """The Source fields (path, format, columns, tags, limit) for entry ``name`` of the registry at ``path``.

    Paths in the entry are relative to the registry's folder, as LLaMA-Factory's dataset_dir. The entry's
    ``formatting`` picks the adapter, ``columns`` become renames, ``tags`` the message tags, ``num_samples`` a limit
    (the first rows; LLaMA-Factory samples at random). Image paths (an ``images`` column, mllm entries) start from
    the registry's folder, as LLaMA-Factory's media_dir defaults to its dataset_dir.
    """
    registry = read_registry(path)
    if name not in registry:
        raise DataError(f"no dataset named '{name}' in the registry{did_you_mean(name, registry)}", file=path)
    entry = registry[name]
    where = f"{path}: entry '{name}'"
    if not isinstance(entry, dict):
        raise DataError("must be an object", file=where)
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise DataError(f"unknown key '{unknown[0]}'{did_you_mean(unknown[0], _KNOWN)}", file=where)
    hub = None
    if "hf_hub_url" in entry:  # as LLaMA-Factory: a Hugging Face Hub entry is read from the Hub, not file_name
        if not isinstance(entry["hf_hub_url"], str) or not entry["hf_hub_url"]:
            raise DataError("hf_hub_url must be a dataset id (ORG/NAME)", file=where)
        hub = HubSpec(entry["hf_hub_url"], config=entry.get("subset"), split=str(entry.get("split") or "train"),
                      data_dir=entry.get("folder"))
    elif "file_name" not in entry:
        other = next((f"{k}: {entry[k]}" for k in _HUB_KEYS if k in entry), None)
        if other is None:
            raise DataError("names no data: give file_name (a local file or folder) or hf_hub_url", file=where)
        raise DataError(f"is only on {_ELSEWHERE[other.split(':')[0]]} ({other}); dpo-cli reads the Hugging Face "
                        "Hub and local files: download the data and set file_name", file=where)
    for key in ("columns", "tags"):
        if not isinstance(entry.get(key) or {}, dict) or not all(isinstance(v, str) for v in (entry.get(key) or {})
                                                                  .values()):
            raise DataError(f"{key} must be an object of names", file=where)
    if hub is None and not isinstance(entry["file_name"], str):
        raise DataError("file_name must be a file or folder name", file=where)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise DataError(f"formatting '{formatting}' is not alpaca, sharegpt or openai", file=where)
    columns = entry.get("columns") or {}
    media = [k for k in _MEDIA if columns.get(k)]
    if media:
        raise DataError(f"has {', '.join(media)} columns; dpo-cli reads text and images, not video or audio",
                        file=where)
    roles = _ALPACA if formatting == "alpaca" else _SHAREGPT
    unknown = sorted(set(columns) - set(roles) - set(_MEDIA))
    if unknown:
        raise DataError(f"column role '{unknown[0]}' does not apply to {formatting} data "
                        f"({', '.join(roles)})", file=where)
    renames = {}
    for role, (ours, default) in roles.items():
        column = columns.get(role, default)
        if column and column != ours:
            renames[ours] = column
    if hub is not None:
        file = hub.label
    else:
        file = Path(path).parent / entry["file_name"]
        if file.is_dir() and not (file / "state.json").exists():
            file = file / "*"  # a folder of data files, as LLaMA-Factory reads it
    return {"path": str(file), "hub": hub, "format": "alpaca" if formatting == "alpaca" else "sharegpt",
            "columns": renames,
            "tags": registry_tags(entry.get("tags") or {}) if formatting != "alpaca" else None,
            "limit": entry.get("num_samples"), "media_dir": str(Path(path).parent)}
