"""How many training rows lose their whole response to max_length, tokenized as TRL's trainers tokenize them."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from dpo_cli.train.scoring import Truncation, common_prefix_length, encode_pairs

SAMPLE = 500  # rows measured at most, spread evenly over the dataset: a share to about 2 points, in a second
THRESHOLD = 0.05  # warn above this share


@dataclass
class ResponseLoss:
    rows: int  # rows measured
    total: int  # rows in the dataset
    lost: int  # rows whose response starts at or beyond max_length
    max_length: int
    suggested: int  # a max_length that keeps 95% of the measured rows whole

    @property
    def share(self) -> float:
        return self.lost / self.rows if self.rows else 0.0


def signal(tokenizer, row: dict) -> tuple[int, int] | None:
    """(token where the learning signal starts, full length) of one canonical row; None for prompt-only rows.

    A pair teaches nothing before chosen and rejected differ; a completion or a conversation, before its first
    response token (a conversation's first assistant turn: TRL's SFTTrainer keeps the start of a long one). The one
    rule for training's warning and for inspect-data --max-length.
    """
    everything = Truncation()
    if "chosen" in row:
        (chosen, _), (rejected, _) = encode_pairs(tokenizer, [row], everything, keep_all=True)[0]
        return common_prefix_length(chosen, rejected), max(len(chosen), len(rejected))
    if "messages" in row:
        turns = row["messages"]
        first = next((i for i, turn in enumerate(turns) if turn["role"] == "assistant"), len(turns))
        row = {"prompt": turns[:first], "completion": turns[first:], "tools": row.get("tools")}
    if "completion" not in row:
        return None
    [(ids, start)], _ = encode_pairs(tokenizer, [row], everything, sides=("completion",), keep_all=True)
    return start, len(ids)


def _measure(tokenizer, rows, sample: int) -> list[tuple[int, int]] | None:
    """(signal start, length) of up to ``sample`` rows spread evenly over ``rows``; None when a row has no response."""
    step = max(1, math.ceil(len(rows) / sample))
    points = []
    for index in range(0, len(rows), step):
        measured = signal(tokenizer, rows[index])
        if measured is None:
            return None
        points.append(measured)
    return points


def _points_file(tokenizer, rows, sample: int) -> Path | None:
    """Where the measurement of ``rows`` by ``tokenizer`` is kept: beside prepared rows (data/cache.py), which
    change folder when they change; None for rows held in memory only.

    Kept because the rows sampled evenly are spread over every page of the memory-mapped file, so measuring them
    again on a sweep's next point reads the whole file into memory (+0.37 GB at 200,000 pairs) and takes 0.6 s.
    """
    files = getattr(rows, "cache_files", None)
    if not files:
        return None
    from dpo_cli.train.refcache import tokenizer_fingerprint
    from dpo_cli.train.trl_compat import dataset_fingerprint

    identity = json.dumps([dataset_fingerprint(rows), len(rows), sample, tokenizer_fingerprint(tokenizer)])
    return Path(files[0]["filename"]).parent / "signals" / f"{hashlib.sha256(identity.encode()).hexdigest()}.json"


def _points(tokenizer, rows, sample: int) -> list[tuple[int, int]] | None:
    from dpo_cli.core.atomic import atomic_write_text

    path = _points_file(tokenizer, rows, sample)
    if path is not None and path.is_file():
        try:
            found = json.loads(path.read_text())["points"]
            return None if found is None else [tuple(point) for point in found]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged record is measured again and rewritten
    points = _measure(tokenizer, rows, sample)
    if path is not None:
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write_text(path, json.dumps({"points": points}))
        except OSError:
            pass  # a read-only cache still measures, each time
    return points


def response_loss(tokenizer, rows, max_length: int | None, mode: str = "keep_start",
                  sample: int = SAMPLE) -> ResponseLoss | None:
    """The share of rows that keep no response token (pairs: no token after chosen and rejected part) when cut to
    ``max_length`` from the end, as TRL's keep_start truncation cuts; None when nothing is cut that way."""
    if not max_length or mode != "keep_start" or len(rows) == 0:
        return None
    first = rows[0]
    conversational = not isinstance(first.get("prompt", first.get("messages")), str)
    if conversational and not getattr(tokenizer, "chat_template", None):
        return None  # TRL's trainer reports the missing chat template itself
    points = _points(tokenizer, rows, sample)
    if points is None:
        return None
    lengths = sorted(length for _, length in points)
    keep = lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))]
    return ResponseLoss(rows=len(points), total=len(rows), lost=sum(start >= max_length for start, _ in points),
                        max_length=max_length, suggested=64 * math.ceil(keep / 64))


def truncation_warning(tokenizer, rows, args) -> str | None:
    """The warning training gives before its first step when too many rows would teach nothing; None otherwise."""
    loss = response_loss(tokenizer, rows, getattr(args, "max_length", None),
                         getattr(args, "truncation_mode", "keep_start"))
    if loss is None or loss.share <= THRESHOLD:
        return None
    measured = f"{loss.rows:,} rows" if loss.rows == loss.total else \
        f"{loss.rows:,} rows measured of {loss.total:,}, evenly spread"
    return (f"{loss.share:.0%} of the training rows ({loss.lost:,} of {measured}) lose their whole response to "
            f"max_length {loss.max_length} (for pairs: everything after chosen and rejected part), so they teach "
            f"nothing; trainer.max_length={loss.suggested} keeps 95% of them whole (dpo-cli inspect-data "
            f"--tokenizer ... --max-length N shows which rows are cut)")
