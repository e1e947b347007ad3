"""`dpo-cli inspect-data`: format, counts per check, duplicates, languages, lengths and samples of a data file."""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpo_cli.core.errors import DataError
from dpo_cli.data.checks import CHECKS
from dpo_cli.data.convert import print_findings
from dpo_cli.data.formats import AdapterOptions
from dpo_cli.data.images import mime_of, size_of, text_of
from dpo_cli.data.rows import RowPipeline, Source, Stats
from dpo_cli.data.writers import dumps

SAMPLES = 3


@dataclass
class ImageCounts:
    """Images in the valid rows (how many rows have them, how many a row has, their pixel sizes) and the rows
    dropped for an image (a file not found, or unreadable: not an image, undecodable, a URL)."""

    rows: int = 0
    per_row: Counter = field(default_factory=Counter)
    widths: array = field(default_factory=lambda: array("l"))
    heights: array = field(default_factory=lambda: array("l"))
    missing: int = 0
    unreadable: int = 0

    def add(self, refs: list[dict]) -> None:
        self.rows += 1
        self.per_row[len(refs)] += 1
        for ref in refs:
            size = size_of(ref)
            if size is not None:
                self.widths.append(size[0])
                self.heights.append(size[1])

    def reject(self, error: DataError, row: dict | None) -> None:
        if getattr(error, "check", None) == "bad-image":
            if error.reason.startswith("image file not found"):
                self.missing += 1
            else:
                self.unreadable += 1


@dataclass
class InspectReport:
    inputs: list[str]
    stats: Stats
    rows: int
    duplicates: int
    char_lengths: dict[str, array]
    token_lengths: dict[str, array] = field(default_factory=dict)
    max_length: int | None = None
    samples: list[dict] = field(default_factory=list)
    rendered: list[str] = field(default_factory=list)
    chat_template: bool = False
    seconds: float = 0.0
    # per row, as training measures it: the token where its learning signal starts, and its full length
    signal_starts: array = field(default_factory=lambda: array("l"))
    signal_lengths: array = field(default_factory=lambda: array("l"))
    template_warning: str | None = None  # what the chat template leaves out (tool calls, reasoning, tools)
    images: ImageCounts = field(default_factory=lambda: ImageCounts())

    @property
    def clean(self) -> bool:
        return not self.stats.dropped


def _text(content: Any) -> str:
    """A message's text; of vision content parts, the text parts only (an image is not characters)."""
    if type(content) is str:
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


def _response(value: Any) -> str:
    if type(value) is str:
        return value
    return "".join(_text(turn["content"]) for turn in value)


def _prompt_chars(example: dict) -> int:
    prompt = example.get("prompt", example.get("messages"))
    if type(prompt) is str:
        return len(prompt)
    return sum(len(_text(turn["content"])) for turn in prompt)


def _as_text(example: dict) -> dict:
    """An image row with its content parts as text (``<image>`` where each image is), for a text tokenizer's counts:
    the tokens an image becomes depend on the model's processor, which inspect-data does not load."""
    out = dict(example)
    out.pop("images", None)
    for name in ("prompt", "chosen", "rejected", "completion", "messages"):
        if type(out.get(name)) is list:
            out[name] = [{**turn, "content": text_of(turn["content"])} for turn in out[name]]
    return out


def _responses(example: dict) -> dict[str, Any]:
    return {k: example[k] for k in ("chosen", "rejected", "completion") if k in example}


def inspect(inputs: list[str], *, format: str | None = None, columns: dict[str, str] | None = None,
            tokenizer=None, max_length: int | None = None, preference: str | None = None,
            pairs: str | None = None, registry: str | None = None, name: str | None = None,
            signal: Callable[[Any, dict], tuple[int, int] | None] | None = None,
            template_drops=None) -> InspectReport:
    """Read every row with every check on (bad rows are counted, not fatal) and gather the statistics; a tokenizer
    (a transformers tokenizer object) adds token lengths as the trainer will see them. ``signal`` is training's
    rule for where a row's learning signal starts (evidence.truncation.signal, handed in: data/ imports none of
    the training side), so that --max-length counts the rows training warns about; ``template_drops``
    (evidence.template.TemplateDrops) counts what the chat template leaves out, as training warns of it."""
    started = time.perf_counter()
    image_counts = ImageCounts()
    pipeline = RowPipeline(lambda example, at: [example], AdapterOptions(preference=preference, pairs=pairs),
                        skip_invalid=True, count_languages=True, on_reject=image_counts.reject)
    seen: set[bytes] = set()
    duplicates = rows = 0
    chars: dict[str, array] = {}
    samples: list[dict] = []
    sources = _sources(inputs, format, columns, registry, name)
    for source in sources:
        for _record, example in pipeline.rows(source):
            rows += 1
            key = hashlib.blake2b(dumps(example), digest_size=16).digest()
            if key in seen:
                duplicates += 1
            seen.add(key)
            if example.get("images") is not None:
                image_counts.add(example["images"])
            chars.setdefault("prompt", array("l")).append(_prompt_chars(example))
            for name, value in _responses(example).items():
                chars.setdefault(name, array("l")).append(len(_response(value)))
            if len(samples) < SAMPLES:
                samples.append(example)
    if pipeline.stats.read == 0 and not pipeline.stats.dropped:  # lines that could not be read are reported below
        raise DataError("no rows: the files hold nothing to inspect or train on", file=", ".join(map(str, inputs)))
    report = InspectReport(inputs=list(inputs), stats=pipeline.stats, rows=rows, duplicates=duplicates,
                           char_lengths=chars, max_length=max_length, samples=samples, images=image_counts)
    if tokenizer is not None:
        _token_statistics(report, sources, tokenizer, preference, pairs, signal if max_length else None,
                          template_drops)
    report.seconds = time.perf_counter() - started
    return report


def _sources(inputs: list[str], format: str | None, columns: dict[str, str] | None, registry: str | None,
             name: str | None) -> list[Source]:
    if registry is not None:
        return [Source.of({"registry": registry, "name": name})]
    return [Source(path=spec, format=format, columns=columns or {}) for spec in inputs]


def _token_statistics(report: InspectReport, sources: list[Source], tok, preference: str | None,
                      pairs: str | None, signal=None, template_drops=None) -> None:
    """Token lengths as the trainer will see them: the prompt through the chat template, each response after it."""
    report.chat_template = bool(getattr(tok, "chat_template", None))

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def render(turns: list[dict], generation: bool, tools=None) -> str:
        return tok.apply_chat_template(turns, tools=tools, tokenize=False, add_generation_prompt=generation)

    lengths: dict[str, array] = {}
    pipeline = RowPipeline(lambda example, at: [example], AdapterOptions(preference=preference, pairs=pairs),
                        skip_invalid=True)
    for source in sources:
        for _record, example in pipeline.rows(source):
            if "images" in example:
                example = _as_text(example)
            if template_drops is not None:
                template_drops.add(example)
            if signal is not None:
                measured = signal(tok, example)
                if measured is None:  # prompt-only rows: no response to lose
                    signal = None
                else:
                    report.signal_starts.append(measured[0])
                    report.signal_lengths.append(measured[1])
            prompt, tools = example.get("prompt"), example.get("tools")
            if prompt is None:  # a whole conversation: all of it is trained on
                turns = example["messages"]
                text = render(turns, False, tools) if report.chat_template else \
                    "\n".join(t["content"] for t in turns)
                lengths.setdefault("prompt", array("l")).append(count(text))
                continue
            if type(prompt) is str or not report.chat_template:
                prompt_text = prompt if type(prompt) is str else "\n".join(t["content"] for t in prompt)
                prompt_tokens = count(prompt_text)
                lengths.setdefault("prompt", array("l")).append(prompt_tokens)
                for name, value in _responses(example).items():
                    lengths.setdefault(name, array("l")).append(count(_response(value)))
                continue
            rendered_prompt = render(prompt, True, tools)
            prompt_tokens = count(rendered_prompt)
            lengths.setdefault("prompt", array("l")).append(prompt_tokens)
            for name, value in _responses(example).items():
                full = render(prompt + value, False, tools) if type(value) is list else rendered_prompt + value
                lengths.setdefault(name, array("l")).append(max(0, count(full) - prompt_tokens))
    report.token_lengths = lengths
    if template_drops is not None:
        report.template_warning = template_drops.message()
    for example in report.samples:
        if "images" in example:
            example = _as_text(example)
        if report.chat_template and type(example.get("prompt")) is list:
            first = next(iter(_responses(example).values()), None)
            turns = example["prompt"] + (first if type(first) is list else [])
            report.rendered.append(render(turns, False, example.get("tools")))
        elif report.chat_template and "messages" in example:
            report.rendered.append(render(example["messages"], False, example.get("tools")))


def _quantiles(values: array) -> tuple[int, int, int, int, float]:
    ordered = sorted(values)
    n = len(ordered)
    return (ordered[0], ordered[n // 2], ordered[min(n - 1, int(n * 0.95))], ordered[-1], sum(ordered) / n)


def over_limit(report: InspectReport) -> dict[str, int]:
    """With keep_start truncation: rows that keep no response token (``lost``; for pairs, none after chosen and
    rejected part) and rows whose response is cut (``cut``). Measured as training measures them when the report has
    training's signal; otherwise rows whose prompt alone fills max_length, and rows whose prompt + longest response
    does not fit."""
    tokens, limit = report.token_lengths, report.max_length
    prompt = tokens.get("prompt")
    if limit is None or prompt is None:
        return {}
    starts, lengths = report.signal_starts, report.signal_lengths
    if starts and len(starts) == len(prompt):
        return {"lost": sum(1 for s in starts if s >= limit),
                "cut": sum(1 for s, n in zip(starts, lengths) if s < limit < n), "rows": len(starts)}
    responses = [tokens[k] for k in ("chosen", "rejected", "completion") if k in tokens]
    prompt_side = response_side = 0
    for i, p in enumerate(prompt):
        longest = max((r[i] for r in responses), default=0)
        if p >= limit:
            prompt_side += 1
        elif p + longest > limit:
            response_side += 1
    return {"lost": prompt_side, "cut": response_side, "rows": len(prompt)}


def _shown(value: Any) -> str:
    """An image's bytes in a printed sample: their size, not the bytes."""
    if isinstance(value, bytes):
        return f"<{len(value):,} bytes of {mime_of(value)}>"
    raise TypeError(type(value).__name__)


def _print_images(console, counts: ImageCounts) -> None:
    if not (counts.rows or counts.missing or counts.unreadable):
        return
    from rich.table import Table

    table = Table(title="images", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("rows with images", f"{counts.rows:,}")
    per_row = [f"{n} image{'s' if n != 1 else ''}: {rows:,} row{'s' if rows != 1 else ''}"
               for n, rows in sorted(counts.per_row.items())]
    table.add_row("images per row", "; ".join(per_row))
    table.add_row("image files missing", f"{counts.missing:,}")
    table.add_row("images unreadable", f"{counts.unreadable:,}")
    for name, values in (("width (px)", counts.widths), ("height (px)", counts.heights)):
        if values:
            lo, median, p95, hi, mean = _quantiles(values)
            table.add_row(name, f"min {lo:,}, median {median:,}, p95 {p95:,}, max {hi:,}")
    console.print(table)


def print_report(console, report: InspectReport) -> None:
    from rich.table import Table

    stats = report.stats
    console.print(f"[bold]{', '.join(report.inputs)}[/bold]")
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    for file, name in stats.formats.items():
        head.add_row("format", f"{name}  ({file})" if len(stats.formats) > 1 else name)
    head.add_row("rows read", f"{stats.read:,}")
    head.add_row("rows valid", f"{report.rows:,}")
    head.add_row("duplicates", f"{report.duplicates:,}")
    if stats.languages:
        mix = ", ".join(f"{lang} {n / max(1, sum(stats.languages.values())):.0%}"
                        for lang, n in stats.languages.most_common(8))
        head.add_row("languages", mix + (" (guessed from the script)" if stats.languages_guessed else ""))
    console.print(head)

    checks = Table(title="checks", title_justify="left")
    checks.add_column("check")
    checks.add_column("rows", justify="right")
    for name in CHECKS:
        count = stats.dropped.get(name, 0)
        if count or name in ("missing-field", "empty-response", "identical", "bad-role", "prompt-mismatch"):
            checks.add_row(name if count == 0 else f"[red]{name}[/red]", f"{count:,}")
    for name, count in stats.warned.items():
        checks.add_row(f"[yellow]{name}[/yellow] (warning)", f"{count:,}")
    console.print(checks)
    findings = Table(show_header=False, box=None, pad_edge=False)
    findings.add_column(style="bold")
    findings.add_column()
    print_findings(findings, stats)
    if findings.row_count:
        console.print(findings)

    _print_images(console, report.images)
    for unit, lengths in (("characters", report.char_lengths), ("tokens", report.token_lengths)):
        if not lengths:
            continue
        table = Table(title=f"lengths ({unit})", title_justify="left")
        for column in ("", "min", "median", "p95", "max", "mean"):
            table.add_column(column, justify="right" if column else "left")
        for name, values in lengths.items():
            if values:
                lo, median, p95, hi, mean = _quantiles(values)
                table.add_row(name, f"{lo:,}", f"{median:,}", f"{p95:,}", f"{hi:,}", f"{mean:,.1f}")
        console.print(table)
    over = over_limit(report)
    if over and over["rows"]:
        n = over["rows"]
        total = over["lost"] + over["cut"]
        console.print(f"over --max-length {report.max_length}: {total:,} rows ({total / n:.1%}); "
                      f"no response token kept: {over['lost']:,} ({over['lost'] / n:.1%}); "
                      f"response truncated: {over['cut']:,} ({over['cut'] / n:.1%})")
    if report.template_warning:
        console.print("warning: " + report.template_warning, style="yellow", markup=False, highlight=False)
    for i, example in enumerate(report.samples):
        console.rule(f"sample {i + 1}")
        if i < len(report.rendered):
            console.print(report.rendered[i], markup=False, highlight=False)
        else:
            console.print(json.dumps(example, ensure_ascii=False, indent=2, default=_shown), markup=False,
                          highlight=False)
    if report.samples and report.token_lengths and not report.chat_template:
        console.print("(the tokenizer has no chat template; samples are shown as rows)")
    console.print("clean: every row passes every check" if report.clean
                  else f"[red]{sum(stats.dropped.values()):,} rows fail a check[/red]")
