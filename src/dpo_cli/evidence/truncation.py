"""How many training rows lose their whole response to max_length, tokenized as TRL's trainers tokenize them."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    step = max(1, math.ceil(len(rows) / sample))
    points, lengths = [], []
    for index in range(0, len(rows), step):
        measured = signal(tokenizer, rows[index])
        if measured is None:
            return None
        points.append(measured[0])
        lengths.append(measured[1])
    lengths.sort()
    keep = lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))]
    return ResponseLoss(rows=len(points), total=len(rows), lost=sum(p >= max_length for p in points),
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
