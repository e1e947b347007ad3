"""Images in rows: resolving references (paths, Arrow Image structs, data URIs), checking they decode, and TRL's
vision layout (content parts ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` plus an ``images`` column).

Every layout is read the same way: image content parts become ``<image>`` placeholders in the text the format
adapters already check, and afterwards :func:`vision` splits the text at the placeholders again, so one rule counts
them against the images for every layout (LLaMA-Factory's ``<image>`` tags, TRL's image parts, RLAIF-V's single
image). A canonical image reference is ``{"bytes": None, "path": "/absolute/file.png"}`` or
``{"bytes": b"...", "path": None}``: what ``datasets.Image()`` stores and decodes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from pathlib import Path
from typing import Any

from dpo_cli.data.checks import Where

PLACEHOLDER = "<image>"
MESSAGE_FIELDS = ("prompt", "chosen", "rejected", "completion", "messages", "conversations")
# the image column of layouts with one image a row (RLAIF-V, Align-Anything), and of those with a list
ONE, MANY = "image", "images"
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"),
          (b"BM", "image/bmp"))


def has_images(row: dict, column: str = MANY) -> bool:
    """Whether a row carries images in ``column`` (``images``, a list, even empty; or ``image``, one)."""
    return row.get(column) is not None


def mime_of(data: bytes) -> str:
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), "application/octet-stream")


def data_uri(data: bytes) -> str:
    """Bytes as a ``data:`` URI, which dpo-cli reads back as the same image."""
    return f"data:{mime_of(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _decodes(data: bytes, at: Where, field: str) -> tuple[int, int]:
    """(width, height) of image bytes; bytes no image reader can open are a row error, not a crash in a processor."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            image.verify()  # reads the whole stream: a cut-off file fails here, not mid-training
        return size
    except UnidentifiedImageError:
        raise at.error("bad-image", f"not a readable image: no image format (PNG, JPEG, GIF, WebP, ...) recognises "
                       f"its {len(data):,} bytes", field) from None
    except Image.DecompressionBombError as exc:  # PIL's guard against images made to exhaust memory
        raise at.error("bad-image", f"not read: {exc}", field) from None
    except (OSError, SyntaxError, ValueError) as exc:  # a known format, damaged or cut short
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise at.error("bad-image", f"not a readable image ({reason})", field) from None


def _from_uri(text: str, at: Where, field: str) -> bytes:
    head, comma, body = text.partition(",")
    if not comma or not head.endswith(";base64"):
        raise at.error("bad-image", "a data URI must be base64 (data:image/png;base64,...)", field)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise at.error("bad-image", "the data URI is not valid base64", field) from None


def _from_path(text: str, base: Path, at: Where, field: str) -> tuple[dict, bytes]:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    path = Path(os.path.abspath(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise at.error("bad-image", f"image file not found: {path}", field) from None
    except OSError as exc:
        raise at.error("bad-image", f"image file cannot be read: {path} ({exc.strerror or exc})", field) from None
    return {"bytes": None, "path": str(path)}, data


def resolve(value: Any, base: Path, at: Where, field: str) -> dict:
    """One image as people store it -> the canonical ``{"bytes", "path"}`` reference, checked to decode.

    A string is a path (relative to ``base``, the data file's folder) or a ``data:`` URI; a mapping is an Arrow /
    parquet ``Image`` struct (its bytes win over its path, as datasets decodes it); a PIL image is encoded as PNG.
    A URL is refused: training machines are often offline, and a download belongs before conversion.
    """
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image (a datasets row decoded elsewhere)
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        ref, data = {"bytes": buffer.getvalue(), "path": None}, buffer.getvalue()
    elif type(value) is dict:
        raw, path = value.get("bytes"), value.get("path")
        if raw is not None:
            if type(raw) is not bytes:
                raise at.error("bad-image", "an image struct's bytes must be binary", field)
            ref, data = {"bytes": raw, "path": None}, raw
        elif type(path) is str and path:
            return resolve(path, base, at, field)
        else:
            raise at.error("bad-image", "an image struct needs bytes or a path", field)
    elif type(value) is str:
        text = value.strip()
        if not text:
            raise at.error("bad-image", "the image path is empty", field)
        if text.startswith("data:"):
            data = _from_uri(text, at, field)
            ref = {"bytes": data, "path": None}
        elif "://" in text:
            raise at.error("bad-image", f"is a URL ({text[:80]}); dpo-cli reads local images only: download it "
                           "and give the file's path", field)
        else:
            ref, data = _from_path(text, base, at, field)
    else:
        raise at.error("wrong-type", "an image must be a path, a data: URI or an {bytes, path} struct, found "
                       f"{type(value).__name__}", field)
    _decodes(data, at, field)
    return ref


def references(row: dict, base: Path, at: Where) -> list[dict]:
    """The row's images, resolved: its ``images`` list, else its one ``image``; errors name images[i] or image."""
    values = row.get(MANY)
    if values is None:
        return [resolve(row[ONE], base, at, ONE)]
    if type(values) is not list:  # one image where a list belongs (a hand-written row): still the row's image
        return [resolve(values, base, at, MANY)]
    return [resolve(v, base, at, f"{MANY}[{i}]") for i, v in enumerate(values)]


def _image_part(part: dict, at: Where, field: str) -> None:
    inline = next((k for k in ("image", "image_url", "url", "path") if part.get(k) not in (None, "")), None)
    if inline is not None:
        raise at.error("bad-image", f"an image part holding its image ('{inline}') is not read; put the image in "
                       "the row's images column and leave {\"type\": \"image\"} in its place", field)


def with_placeholders(row: dict, at: Where) -> dict:
    """A copy of the row in which every ``{"type": "image"}`` content part is an ``<image>`` text part, so the text
    adapters read it and :func:`vision` can put the image back where it was."""
    out = dict(row)
    for name in MESSAGE_FIELDS:
        turns = row.get(name)
        if type(turns) is not list:
            continue
        changed = []
        for i, turn in enumerate(turns):
            content = turn.get("content") if type(turn) is dict else None
            if type(content) is list and any(type(p) is dict and p.get("type") == "image" for p in content):
                parts = []
                for j, part in enumerate(content):
                    if type(part) is dict and part.get("type") == "image":
                        _image_part(part, at, f"{name}[{i}].content[{j}]")
                        part = {"type": "text", "text": PLACEHOLDER}
                    parts.append(part)
                turn = {**turn, "content": parts}
            changed.append(turn)
        out[name] = changed
    return out


def _parts(text: str) -> list[dict]:
    """``"<image>What is it?"`` -> ``[{"type": "image"}, {"type": "text", "text": "What is it?"}]``."""
    parts: list[dict] = []
    for i, piece in enumerate(text.split(PLACEHOLDER)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _turns(value: Any) -> list[dict]:
    return [{"role": "user", "content": value}] if type(value) is str else value


def vision(example: dict, images: list[dict], at: Where, field: str) -> dict:
    """A canonical text example whose text holds ``<image>`` placeholders -> TRL's vision layout with ``images``.

    The placeholders must be in prompt (user or system) turns, one per image, in order: a mismatch is the row's
    error here rather than a crash inside the processor. Plain-text rows become conversational (TRL's vision layout
    is conversational only)."""
    out = dict(example)
    if type(out.get("prompt")) is str:
        out["prompt"] = _turns(out["prompt"])
        for name in ("chosen", "rejected", "completion"):
            if type(out.get(name)) is str:
                out[name] = [{"role": "assistant", "content": out[name]}]
    found = 0
    for name in ("prompt", "messages", "chosen", "rejected", "completion"):
        for turn in out.get(name) or ():
            count = turn["content"].count(PLACEHOLDER)
            if count and (name in ("chosen", "rejected", "completion") or turn["role"] == "assistant"):
                raise at.error("image-count", f"an {PLACEHOLDER} placeholder in an assistant turn; images belong "
                               "in the prompt's user turns", field)
            found += count
    if found != len(images):
        raise at.error("image-count", f"the row has {len(images)} image{'s' if len(images) != 1 else ''} but "
                       f"{found} {PLACEHOLDER} placeholder{'s' if found != 1 else ''} (image content parts); "
                       "they must match one to one", field)
    for name in ("prompt", "messages", "chosen", "rejected", "completion"):
        if out.get(name) is not None:
            out[name] = [{**turn, "content": _parts(turn["content"])} for turn in out[name]]
    out["images"] = images
    return out


def first_user_image(question: str) -> str:
    """RLAIF-V's and Align-Anything's question, with its one image first unless the text already places it."""
    return question if PLACEHOLDER in question else PLACEHOLDER + question


def text_of(content: Any) -> str:
    """A message's text whether its content is a string or vision content parts (images as ``<image>``)."""
    if type(content) is str:
        return content
    if type(content) is not list:
        return ""
    return "".join(p if type(p) is str else PLACEHOLDER if p.get("type") == "image" else str(p.get("text") or "")
                   for p in content if type(p) in (str, dict))


def for_output(images: list[dict], folder: Path) -> list[str]:
    """Canonical references as an output file in ``folder`` keeps them: paths relative to that folder (never copied),
    embedded bytes as data URIs."""
    out = []
    for ref in images:
        if ref.get("bytes") is not None:
            out.append(data_uri(ref["bytes"]))
        else:
            out.append(Path(os.path.relpath(ref["path"], os.path.abspath(folder))).as_posix())
    return out


def file_digest(ref: dict) -> bytes:
    """What an image contributes to the data's fingerprint: its bytes' digest (read from its file if need be)."""
    data = ref["bytes"] if ref.get("bytes") is not None else Path(ref["path"]).read_bytes()
    return hashlib.sha256(data).digest()


def stamp(path: str) -> list[int] | None:
    """(size, mtime in ns) of an image file, None when it is gone: what a prepared cache entry is checked against."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def size_of(ref: dict) -> tuple[int, int] | None:
    """(width, height) of a canonical reference, from its header only; None if it cannot be read any more."""
    from PIL import Image

    try:
        source = io.BytesIO(ref["bytes"]) if ref.get("bytes") is not None else ref["path"]
        with Image.open(source) as image:
            return image.size
    except (OSError, ValueError):
        return None
