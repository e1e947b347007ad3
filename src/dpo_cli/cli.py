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

_state = {"debug": False}


def _env_debug() -> bool:
    return os.environ.get("DPO_CLI_DEBUG") == "1"


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False):
    _state["debug"] = debug or _env_debug()


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="Dotted overrides such as trainer.beta=0.2 output_dir=/tmp/run.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and check everything, load no weights.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty output directory.")] = False,
    nproc: Annotated[Optional[int], typer.Option(
        "--nproc", min=1, help="Start this many processes: torchrun on CPU, accelerate launch on GPUs.")] = None,
    accelerate_config: Annotated[Optional[str], typer.Option(
        "--accelerate-config", help="ddp, fsdp2, zero2, zero3, zero3-offload, or a path to an Accelerate config.",
        show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", help="auto (the newest complete checkpoint in output_dir) or a checkpoint directory.",
        show_default=False)] = None,
    resume_force: Annotated[bool, typer.Option(
        "--resume-force", help="Resume even if the recipe or data changed since the checkpoint.")] = False,
):
    """Train from a recipe: dpo-cli train recipe.yaml [section.key=value ...]."""
    from .recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
    if nproc or accelerate_config or dry_run:
        from . import launch
        from .models import plan_device

        device = plan_device(resolved.trainer).device
        config = launch.accelerate_config_path(accelerate_config) if accelerate_config else None
        for warning in launch.config_warnings(launch.load_accelerate_config(config), resolved, device) \
                if config else []:
            _console(stderr=True).print(f"[yellow]warning:[/] {warning}")
        if nproc and not launch.inside_launcher():
            recipe_args = [str(recipe), *(overrides or []), *(["--overwrite"] if overwrite else []),
                           *(["--resume", resume] if resume else []), *(["--resume-force"] if resume_force else [])]
            command = launch.launch_command(recipe_args, nproc, config, device)
            if dry_run:
                _console().print("would run: " + " ".join(command), soft_wrap=True)
            else:
                raise typer.Exit(launch.relaunch(command, _console(stderr=True).print))
    if dry_run:
        from .report import print_dry_run
        from .run import describe

        print_dry_run(_console(), resolved, describe(resolved))
        return
    from .report import print_run_summary
    from .run import train as run_training

    warn = _console(stderr=True).print
    result = run_training(resolved, overwrite=overwrite, resume=resume, resume_force=resume_force,
                          warn=lambda text: warn(f"[yellow]warning:[/] {text}"))
    if result.is_main:
        print_run_summary(_console(), result)


def main() -> None:
    if not _env_debug() and "--debug" not in sys.argv:
        import warnings

        # Library deprecation notices are for dpo-cli's developers to act on, not for someone running a recipe.
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        app()
    except DpoCliError as exc:
        if _state["debug"] or _env_debug():
            raise
        from rich.text import Text

        _console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
