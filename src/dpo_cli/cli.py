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


@app.command("merge-lora")
def merge_lora(
    run_dir: Annotated[Path, typer.Argument(help="Output directory of a LoRA or QLoRA training run.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", help="Directory for the merged model.", show_default=False)],
    dtype: Annotated[str, typer.Option("--dtype", help="auto (the base's stored dtype), float32, bfloat16, float16.")
                     ] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
):
    """Merge a run's LoRA adapter into its base model (never into 4-bit weights) and check the logits still match."""
    from .merge import TOLERANCE
    from .merge import merge_lora as run_merge

    result = run_merge(run_dir, output, dtype=dtype, overwrite=overwrite)
    verdict = "[green]ok[/]" if result.within_tolerance else f"[bold red]larger than expected[/] " \
                                                             f"(tolerance {TOLERANCE[result.dtype]:g})"
    _console().print(f"merged {run_dir} into {result.base} in {result.dtype}: max |logit difference| merged vs "
                     f"adapter on {result.prompts} bundled prompts ({result.tokens} tokens): "
                     f"{result.max_abs_diff:.3g} {verdict}\nsaved safetensors and tokenizer to {result.output}")


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
