"""dpo-cli score: a reward model's score for every row of a data file (pairs get one per side)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.errors import InputError
from dpo_cli.core.paths import check_output_file
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.evidence.evaluate import to_device
from dpo_cli.recipe.schema import ModelSection
from dpo_cli.train.models import load_sequence_classifier, load_tokenizer, loading, quiet_libraries, resolve_model_path
from dpo_cli.train.scoring import Truncation, encode_pairs, score_sequences


@dataclass
class Scored:
    rows: list[dict]  # the canonical rows, each with score (or score_chosen and score_rejected) added
    pairs: bool
    model: str


def _canonical_rows(data: str) -> list[dict]:
    """Rows in their canonical shape, whatever the file's format (pairs, unpaired, conversations, prompt/completion)."""
    pipeline = RowPipeline(lambda example, at: [example])
    return [row for _, row in pipeline.rows(Source.of(data))]


def _split(row: dict) -> tuple[Any, Any]:
    """(prompt, response) of a single sequence to score."""
    if "messages" in row:
        return row["messages"][:-1], row["messages"][-1:]
    if "completion" in row:
        return row["prompt"], row["completion"]
    raise InputError("these rows hold only prompts: there is no response to score")


def score_file(model_path: str, data: str, *, max_length: int | None = None, batch_size: int = 16,
               output: Path | None = None, force: bool = False) -> Scored:
    """Score every row of ``data``; ``output``, where the scores will go, is checked first: never over what is read,
    and an existing file only with ``force``."""
    from transformers import AutoConfig

    if output is not None:
        check_output_file(output, [p for p in (data, model_path) if Path(p).exists()], what="--output", force=force)
    quiet_libraries()
    rows = _canonical_rows(data)
    if not rows:
        raise InputError(f"{data} holds no rows to score")
    section = ModelSection(name_or_path=model_path)
    with loading(model_path):
        config = AutoConfig.from_pretrained(resolve_model_path(model_path))
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        raise InputError(f"{model_path} is not a reward model (its architecture is "
                         f"{', '.join(config.architectures or ['unknown'])}); train one with stage: reward")
    tokenizer = load_tokenizer(section)
    model = to_device(load_sequence_classifier(section))
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs = "chosen" in rows[0]
    truncation = Truncation(max_length)
    if pairs:
        sequences, _ = encode_pairs(tokenizer, rows, truncation, keep_all=True)
    else:
        split = [dict(zip(("prompt", "response"), _split(row))) for row in rows]
        sequences, _ = encode_pairs(tokenizer, split, truncation, ("response",), keep_all=True)
    scores = score_sequences(model, tokenizer, sequences, batch_size=batch_size).tolist()
    for i, row in enumerate(rows):
        if pairs:
            row["score_chosen"], row["score_rejected"] = scores[2 * i], scores[2 * i + 1]
        else:
            row["score"] = scores[i]
    return Scored(rows, pairs, model_path)


def write_scores(scored: Scored, output: Path) -> None:
    atomic_write_text(output, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in scored.rows))


def scores_table(scored: Scored, limit: int | None = None):
    from rich.table import Table

    rows = scored.rows if limit is None else scored.rows[:limit]
    table = Table(title=f"{scored.model}: {len(scored.rows)} rows", title_justify="left")
    table.add_column("row", justify="right")
    if scored.pairs:
        table.add_column("chosen", justify="right")
        table.add_column("rejected", justify="right")
        table.add_column("margin", justify="right")
        for i, row in enumerate(rows, 1):
            table.add_row(str(i), f"{row['score_chosen']:+.4f}", f"{row['score_rejected']:+.4f}",
                          f"{row['score_chosen'] - row['score_rejected']:+.4f}")
    else:
        table.add_column("score", justify="right")
        for i, row in enumerate(rows, 1):
            table.add_row(str(i), f"{row['score']:+.4f}")
    return table


def pairwise_accuracy(scored: Scored) -> float | None:
    if not scored.pairs:
        return None
    return sum(r["score_chosen"] > r["score_rejected"] for r in scored.rows) / len(scored.rows)
