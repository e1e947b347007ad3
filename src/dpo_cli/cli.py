"""The dpo-cli command line: each command parses its options, then calls one function elsewhere."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import DpoCliError

app = typer.Typer(
    name="dpo-cli",
    help="Align a language model with preference data: one YAML recipe to a TRL training run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": os.environ.get("DPO_CLI_DEBUG") == "1"}


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False):
    if debug:
        _state["debug"] = True


@app.command(context_settings={"allow_extra_args": False})
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="Dotted overrides such as trainer.beta=0.2 output_dir=/tmp/run.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and check everything, load no weights.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty output directory.")] = False,
):
    """Train from a recipe: dpo-cli train recipe.yaml [section.key=value ...]."""
    from .recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
    if dry_run:
        from .report import print_dry_run
        from .run import describe

        print_dry_run(_console(), resolved, describe(resolved))
        return
    from .report import print_run_summary
    from .run import train as run_training

    result = run_training(resolved, overwrite=overwrite)
    print_run_summary(_console(), result)


@app.command("convert-data")
def convert_data(
    inputs: Annotated[list[str], typer.Argument(help="Input files, directories or globs.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .jsonl, .jsonl.gz, .json or .parquet.",
                                         show_default=False)],
    format: Annotated[Optional[str], typer.Option(help="Input format (default: detected per file).")] = None,
    to: Annotated[str, typer.Option(help="Output shape: trl, text, alpaca, sharegpt, kto, prompt-only.")] = "trl",
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="Rename: CANONICAL=COLUMN, repeatable.")] = None,
    keep: Annotated[Optional[list[str]], typer.Option(help="Extra column to keep, repeatable.")] = None,
    where: Annotated[Optional[str], typer.Option(help="Filter, e.g. \"language == 'zh'\".")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Write the first N rows after filtering.")] = None,
    shuffle: Annotated[bool, typer.Option(help="Shuffle the output rows.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for --shuffle and --eval-split.")] = 42,
    dedupe: Annotated[bool, typer.Option(help="Drop exact duplicate rows.")] = False,
    eval_split: Annotated[Optional[float], typer.Option(help="Fraction written to OUTPUT.eval.EXT.")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Drop bad rows instead of stopping.")] = False,
    rejects: Annotated[Optional[Path], typer.Option(help="With --skip-invalid, write bad rows here.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    preference: Annotated[str, typer.Option(help="pku-saferlhf: better or safer.")] = "better",
    pairs: Annotated[str, typer.Option(help="ranked: best-worst, all or threshold=X.")] = "best-worst",
):
    """Convert preference data to TRL's rows: dpo-cli convert-data in.parquet -o out.jsonl."""
    from .data.convert import ConvertOptions, convert, parse_map, print_summary

    summary = convert(ConvertOptions(
        inputs=inputs, output=output, format=format, to=to, columns=parse_map(map_ or []), keep=keep or [],
        where=where, limit=limit, shuffle=shuffle, seed=seed, dedupe=dedupe, eval_split=eval_split,
        skip_invalid=skip_invalid, rejects=rejects, force=force, preference=preference, pairs=pairs))
    print_summary(_console(), summary)


@app.command("inspect-data")
def inspect_data(
    inputs: Annotated[list[str], typer.Argument(help="Data files, directories or globs.", show_default=False)],
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer for token lengths and samples.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Report rows longer than this (tokens).")] = None,
    format: Annotated[Optional[str], typer.Option(help="Input format (default: detected per file).")] = None,
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="Rename: CANONICAL=COLUMN, repeatable.")] = None,
):
    """Check a data file and show its format, problems, languages and lengths; exit 2 if any row fails a check."""
    from .data.convert import parse_map
    from .data.inspect import inspect, print_report

    if max_length is not None and tokenizer is None:
        raise typer.BadParameter("--max-length counts tokens; give --tokenizer too", param_hint="--max-length")
    report = inspect(inputs, format=format, columns=parse_map(map_ or []), tokenizer=tokenizer,
                     max_length=max_length)
    print_report(_console(), report)
    if not report.clean:
        raise typer.Exit(2)


def main() -> None:
    try:
        app()
    except DpoCliError as exc:
        if _state["debug"]:
            raise
        from rich.text import Text

        _console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
