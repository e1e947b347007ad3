"""What a run shows a person: the dry-run plan and the end-of-run table on the console."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from .recipe import Recipe


def print_dry_run(console: Console, recipe: Recipe, plan: dict[str, Any]) -> None:
    console.print("[bold]resolved recipe[/]")
    console.print(Syntax(recipe.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    table = Table(title=f"{plan['config_class']} fields set by this recipe", title_justify="left")
    table.add_column("field")
    table.add_column("value")
    for key, value in plan["config_fields"].items():
        table.add_row(key, repr(value))
    console.print(table)
    device = plan["device"]
    console.print(f"[bold]device[/]     {device.device} ({device.reason}); mixed precision: {device.precision}")
    console.print(f"[bold]model dtype[/] {recipe.model.dtype}")
    console.print(f"[bold]reference[/]  {plan['reference']}")
    if plan.get("memory") is not None:
        print_memory_plan(console, plan["memory"])
    console.print("dry run: no weights loaded, nothing written")


def print_memory_plan(console: Console, memory) -> None:
    from .memory import human

    if isinstance(memory, str):
        console.print(f"[bold]memory plan[/] {memory}")
        return
    table = Table(title="memory plan (per training device)", title_justify="left")
    table.add_column("what")
    table.add_column("bytes", justify="right")
    table.add_column("counted as")
    for what, size, how in memory.rows:
        table.add_row(what, human(size), how)
    table.add_row("[bold]total[/]", f"[bold]{human(memory.total)}[/]", "")
    console.print(table)
    if memory.device_bytes is None:
        console.print("[bold]device memory[/] unknown")
        return
    verdict = "[bold red]over[/]" if memory.over else "[green]fits[/]"
    console.print(f"[bold]device memory[/] {human(memory.device_bytes)} ({memory.device_label}): {verdict}")
    for rank, (change, saving) in enumerate(memory.suggestions, 1):
        console.print(f"  {rank}. {change}: saves about {human(saving)}")


_ROWS = (
    ("preference accuracy (implicit reward)", "reward_accuracy", "{:.3f}"),
    ("mean reward margin", "reward_margin", "{:+.4f}"),
    ("preference accuracy (length-normalised log-prob)", "logprob_accuracy", "{:.3f}"),
    ("mean log-prob, chosen", "logps_chosen", "{:.2f}"),
    ("mean log-prob, rejected", "logps_rejected", "{:.2f}"),
)


def evaluation_table(before: dict, after: dict) -> Table:
    table = Table(title=f"held-out pairs: {after['pairs']}", title_justify="left")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for label, key, fmt in _ROWS:
        if key in after:
            table.add_row(label, fmt.format(before[key]) if key in before else "-", fmt.format(after[key]))
    return table


def print_run_summary(console: Console, result) -> None:
    manifest = result.manifest
    evaluation = manifest.get("evaluation")
    if evaluation:
        console.print(evaluation_table(evaluation["before"], evaluation["after"]))
    console.print(f"[bold green]done[/]: {manifest.get('global_step')} steps; model, run.json and metrics.jsonl "
                  f"in {result.output_dir}")
