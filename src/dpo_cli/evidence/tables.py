"""What a run shows a person: the dry-run plan and the end-of-run table on the console."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from dpo_cli.core.redact import redact
from dpo_cli.core.rundir import RunDir
from dpo_cli.train.memory import human

if TYPE_CHECKING:  # the plan is made by the train package; printing it needs none of its imports
    from dpo_cli.train.plan import RunPlan


def print_dry_run(console: Console, plan: RunPlan) -> None:
    recipe = plan.recipe
    console.print("[bold]resolved recipe[/]")
    console.print(Syntax(recipe.resolved_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    if plan.config_class is not None:
        table = Table(title=f"{plan.config_class} fields set by this recipe", title_justify="left")
        table.add_column("field")
        table.add_column("value")
        for key, value in redact(plan.config_fields).items():
            table.add_row(key, repr(value))
        console.print(table)
    device = plan.device
    console.print(f"[bold]device[/]     {device.device} ({device.reason}); mixed precision: {device.precision}")
    console.print(f"[bold]model dtype[/] {recipe.model.dtype}")
    if plan.global_batch:
        console.print(f"[bold]processes[/]  {plan.processes}; {batch_text(plan.global_batch)}", highlight=False)
    for default in plan.defaults:
        how = "set by the recipe" if default.explicit else f"chosen: {default.reason}"
        console.print(f"[bold]{default.key}[/] {str(default.value).lower()} ({escape(how)})")
    for line in plan.vision.lines() if plan.vision is not None else []:
        console.print(f"[bold]images[/]     {escape(line)}", highlight=False)
    console.print(f"[bold]reference[/]  {plan.reference}")
    console.print(f"[bold]safety[/]     {plan.safety}")
    if plan.memory is not None:
        print_memory_plan(console, plan.memory)
    for split, found in plan.data.items():
        details = "; ".join(f"{what.replace('_', ' ')}: {', '.join(f'{k} {n:,}' for k, n in counts.items())}"
                            for what, counts in found.items() if isinstance(counts, dict))
        held_out = f", {found['held_out']:,} of them held out by data.eval_split" if found.get("held_out") else ""
        how = "already prepared and checked (data.cache_dir)" if found.get("prepared") else "read and checked"
        console.print(f"[bold]data[/]       {split}: {found['rows']:,} rows {how}{held_out}"
                      + (f" ({details})" if details else ""), highlight=False)
    for note in plan.notes:
        console.print(f"[bold]pipeline[/]   {escape(note)}", highlight=False)
    if plan.config_class is not None and not plan.trl_checked:
        console.print(f"[bold]TRL checks[/] {plan.config_class}'s own checks run when the run starts, before data or "
                      "weights load (a dry run imports no TRL)", highlight=False)
    console.print("dry run: no weights loaded, nothing written")


def print_memory_plan(console: Console, memory) -> None:
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
    context = f", keeping {human(memory.reserve)} for the CUDA context" if memory.reserve else ""
    console.print(f"[bold]device memory[/] {human(memory.device_bytes)} ({memory.device_label}{context}): {verdict}")
    if memory.over:
        what, size = memory.largest
        console.print(f"largest item: {what}, {human(size)}. Cheapest fixes first (each alone):")
    for rank, (change, saving, fits) in enumerate(memory.suggestions, 1):
        console.print(f"  {rank}. {change}: saves about {human(saving)}{' (then fits)' if fits else ''}",
                      markup=False)


def batch_text(batch: dict) -> str:
    """The global batch as a product, so a reader sees where each factor comes from."""
    processes = f"{batch['processes']} process" + ("es" if batch["processes"] > 1 else "")
    return (f"global batch {batch['rows']} rows per optimizer step ({batch['per_device']} per device x "
            f"{batch['accumulation']} accumulation x {processes})")


KINDS = {"NO": "one process", "MULTI_CPU": "data parallel (DDP over gloo)", "MULTI_GPU": "data parallel (DDP)",
         "FSDP": "FSDP (sharded)"}


def distributed_line(record: dict, verb: str = "ran as") -> str:
    """How a run runs over its processes, from run.json's ``distributed``."""
    kind = KINDS.get(record["type"], record["type"])
    if record["type"] == "DEEPSPEED":
        kind = f"DeepSpeed ZeRO-{record.get('zero_stage')}"
    where = "" if record["processes"] == 1 else \
        f" over {record['processes']} processes on {record['nodes']} node{'s' if record['nodes'] > 1 else ''}"
    precision = record["mixed_precision"].replace("no", "off")
    return f"{verb} {kind}{where}, mixed precision {precision}; {batch_text(record['global_batch'])}"


def mismatch_warning(record: dict, device: str) -> str:
    """An Accelerate config's distributed type that is not what runs (accelerate falls back without a word)."""
    why = ("; accelerate needs GPUs for it, and on a machine without any runs plain data parallel, a full copy of the "
           "model in each process") if device == "cpu" else ""
    kind = KINDS.get(record["type"], record["type"])
    return f"the Accelerate config asks for {record['asked']}, but this run is {kind}{why}"


def throughput_line(throughput: dict | None) -> str | None:
    """Tokens per second and MFU of a run, as the end-of-run table shows them."""
    if not throughput or throughput.get("tokens_per_second") is None:
        return None
    mfu = throughput.get("mfu")
    share = f"{mfu:.1%} of the {throughput['device']}'s bf16 peak ({throughput['peak_bf16_flops'] / 1e12:.0f} " \
            f"TFLOP/s)" if mfu is not None else f"unknown (no bf16 peak known for {throughput['device']})"
    return f"throughput: {throughput['tokens_per_second']:,.0f} tokens/s; estimated MFU {share}"


METRIC_ROWS = (
    ("preference accuracy (implicit reward)", "reward_accuracy", "{:.3f}"),
    ("mean reward margin", "reward_margin", "{:+.4f}"),
    ("preference accuracy (length-normalised log-prob)", "logprob_accuracy", "{:.3f}"),
    ("mean log-prob, chosen", "logps_chosen", "{:.2f}"),
    ("mean log-prob, rejected", "logps_rejected", "{:.2f}"),
    ("KL to reference on chosen, per token", "kl_chosen_per_token", "{:.5f}"),
    ("spread of the margin (std)", "margin_std", "{:.4f}"),
)


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)  # None: not measured, or not finite


REWARD_MODEL_ROWS = (
    ("pairwise accuracy (reward of chosen above rejected)", "reward_accuracy", "{:.3f}"),
    ("mean reward margin", "reward_margin", "{:+.4f}"),
    ("mean reward, chosen", "reward_chosen", "{:+.4f}"),
    ("mean reward, rejected", "reward_rejected", "{:+.4f}"),
    ("spread of the margin (std)", "margin_std", "{:.4f}"),
)


def evaluation_table(before: dict, after: dict, rows=METRIC_ROWS) -> Table:
    table = Table(title=f"held-out pairs: {after['pairs']}", title_justify="left")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for label, key, fmt in rows:
        if key in after:
            table.add_row(label, _fmt(before.get(key), fmt), _fmt(after[key], fmt))
    return table


def print_run_summary(console: Console, result) -> None:
    manifest = result.manifest
    evaluation = manifest.get("evaluation") or {}
    if evaluation.get("after"):
        from dpo_cli.train.stages import STAGES
        from dpo_cli.train.stages.base import TrainingStage

        stage = STAGES.get(manifest.get("stage"))
        rows = REWARD_MODEL_ROWS if isinstance(stage, TrainingStage) and stage.evaluation == "reward" else METRIC_ROWS
        console.print(evaluation_table(evaluation["before"], evaluation["after"], rows))
        line = length_bias_line(evaluation["after"].get("length_bias"))
        if line:
            console.print(line)
    for judged in [evaluation.get("judge"), *evaluation.get("judge_also", [])]:
        if judged:
            print_judge(console, judged)
    if manifest.get("distributed"):
        console.print(distributed_line(manifest["distributed"]), highlight=False)
    line = throughput_line(manifest.get("throughput"))
    if line:
        console.print(line, markup=False)
    if manifest.get("plots"):
        console.print(f"curves in {result.output_dir / 'plots'}; dpo-cli report {result.output_dir} writes an HTML "
                      f"report")
    if "pairs" in manifest:
        console.print(f"[bold green]done[/]: {manifest['pairs']['pairs']} pairs in {result.output_dir / RunDir.PAIRS}"
                      f"; every sample and its reward in {RunDir.SAMPLES}")
        return
    console.print(f"[bold green]done[/]: {manifest.get('global_step')} steps; model, run.json and metrics.jsonl "
                  f"in {result.output_dir}")


def _num(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def pipeline_rows(summary: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """A pipeline summary as text, for the console and the HTML report alike: (stage table header, rows) with one row
    per stage, and (round table header, rows) with one column per round and one row per figure."""
    stage_head = ["stage", "kind", "this run", "made", "accuracy", "log-prob", "reward"]
    stage_rows = []
    for name, s in summary["stages"].items():
        done = "ran" if s["ran"] else "skipped" if s["status"] == "completed" else s["status"] or "not run"
        made = f"{s['pairs']} pairs" if "pairs" in s else _num(s.get("steps"), "{} steps")
        stage_rows.append([name, s["stage"], done, made, _num(s.get("accuracy")), _num(s.get("logprob_accuracy")),
                           _num(s.get("mean_reward"), "{:+.4f}")])
    rounds = summary["rounds"]
    if not rounds:
        return stage_head, stage_rows, [], []
    trained = [r["trained"][0] if r["trained"] else {"name": "-"} for r in rounds]
    judges = {r["judge"] for r in rounds if "judge" in r}
    round_head = ["round", *(str(r["round"]) for r in rounds)]
    round_rows = [
        ["policy sampled", *(r["policy"] for r in rounds)],
        ["pairs (ties dropped)", *(f"{r.get('pairs', '-')} ({r.get('ties', '-')})" for r in rounds)],
        ["mean reward of the samples", *(_num(r.get("mean_reward"), "{:+.4f}") for r in rounds)],
        ["  on held-out prompts", *(_num(r.get("heldout_mean_reward"), "{:+.4f}") for r in rounds)],
        [f"judge's held-out accuracy ({', '.join(sorted(judges)) or '-'})",
         *(_num(r.get("judge_accuracy")) for r in rounds)],
        ["then trained on the pairs", *(t["name"] for t in trained)],
        ["  held-out accuracy after", *(_num(t.get("accuracy")) for t in trained)],
        ["  log-prob accuracy after", *(_num(t.get("logprob_accuracy")) for t in trained)],
    ]
    # eval.judge in a round's training stage: its judged win rate against each opponent, the round before first
    for slot in range(max((len(t.get("judged", [])) for t in trained), default=0)):
        label = "the model it started from" if slot == 0 else \
            ", ".join(sorted({t["judged"][slot]["against"] for t in trained if len(t.get("judged", [])) > slot}))
        round_rows.append([f"  judged win rate vs {label}",
                           *(_num(t["judged"][slot]["win_rate"]) if len(t.get("judged", [])) > slot else "-"
                             for t in trained)])
    return stage_head, stage_rows, round_head, round_rows


def print_pipeline_summary(console: Console, summary: dict) -> None:
    stage_head, stage_rows, round_head, round_rows = pipeline_rows(summary)
    for title, head, rows in (("stages: held-out accuracy (implicit reward, or the reward model's) and log-prob "
                               "accuracy after training; mean reward of a pairs stage's samples", stage_head,
                               stage_rows),
                              ("rounds: each round's policy sampled and judged, then trained on its pairs", round_head,
                               round_rows)):
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(head):
            table.add_column(column, justify="left" if i == 0 or head is stage_head and i < 4 else "right",
                             no_wrap=i == 0 or head is stage_head and i == 3)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def length_bias_line(bias: dict) -> str | None:
    if not bias or bias.get("r_squared") is None:
        return None
    return (f"length bias: {bias['r_squared']:.0%} of the margin's variance is explained by the length difference "
            f"(margin per token {bias['margin_per_token']:+.4f}; chosen longer in {bias['chosen_longer_fraction']:.0%} "
            f"of pairs)")


def eval_table(result: dict) -> Table:
    """The figures of ``dpo-cli eval`` for one model."""
    metrics = result["metrics"]
    what = "reward model" if result["kind"] == "reward_model" else "policy"
    table = Table(title=f"{what} {result['model']} on {metrics['pairs']} pairs", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = REWARD_MODEL_ROWS if result["kind"] == "reward_model" else METRIC_ROWS
    for label, key, fmt in rows:
        if metrics.get(key) is not None:
            table.add_row(label, fmt.format(metrics[key]))
    quantiles = metrics.get("margin_quantiles")
    if quantiles and None not in quantiles.values():
        table.add_row("margin quantiles (min p10 p50 p90 max)",
                      " ".join(f"{quantiles[k]:+.3f}" for k in ("min", "p10", "p50", "p90", "max")))
    return table


def print_eval(console: Console, result: dict) -> None:
    console.print(eval_table(result))
    line = length_bias_line(result["metrics"].get("length_bias"))
    if line:
        console.print(line)
    if result["kind"] == "policy" and not result.get("reference"):
        console.print("no reference model (--ref): implicit-reward accuracy, margins and KL need one")


# A sweep's columns: (header, key of a point's held-out figures, format); a column no point has is left out.
SWEEP_COLUMNS = (
    ("accuracy", "reward_accuracy", "{:.3f}"),
    ("margin", "reward_margin", "{:+.4f}"),
    ("lp acc.", "logprob_accuracy", "{:.3f}"),  # length-normalised log-prob accuracy
    ("KL/tok", "kl_chosen_per_token", "{:.5f}"),
    ("win", "win_rate", "{:.3f}"),  # judged by eval.judge, ties half
    ("LC win", "lc_win_rate", "{:.3f}"),
)


def sweep_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """A sweep summary (sweep.json) as text, best first: one row per point, a column per swept key (named by its last
    part where that is unambiguous), and the point's held-out figures after training."""
    points = summary["points"]
    keys = list(summary["sweep"])
    lasts = [key.rsplit(".", 1)[-1] for key in keys]
    names = [last if lasts.count(last) == 1 else key for key, last in zip(keys, lasts)]
    columns = [c for c in SWEEP_COLUMNS if any(c[1] in p["heldout"] for p in points)]
    head = ["#", *names, "this run", "steps", *(c[0] for c in columns), "s"]
    rows = []
    for rank, p in enumerate(points, 1):
        done = p["this_run"] if p["status"] == "completed" else f"{p['this_run']} ({p['status'] or 'not started'})"
        values = [json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in
                  (p["values"].get(key) for key in keys)]
        rows.append([str(rank), *values, done, _num(p.get("steps"), "{}"),
                     *(_num(p["heldout"].get(key), fmt) for _, key, fmt in columns),
                     _num(p.get("seconds"), "{:.1f}")])
    return head, rows


def print_sweep_summary(console: Console, summary: dict) -> None:
    head, rows = sweep_rows(summary)
    select = summary["select"]
    pairs = next((p["heldout_pairs"] for p in summary["points"] if p.get("heldout_pairs")), None)
    before = next((p["heldout_before"].get(select["key"]) for p in summary["points"]
                   if p["heldout_before"].get(select["key"]) is not None), None)
    title = f"sweep: {len(rows)} points, best first by {select['metric']} ({select['order']}); s: seconds"
    if pairs:
        title += f"; held-out pairs: {pairs}" + (f", {select['key']} before training {before:.3f}"
                                                 if before is not None else "")
    table = Table(title=title, title_justify="left")
    swept = len(summary["sweep"])
    for i, column in enumerate(head):  # a swept value folds; the figures stay whole on a narrow terminal
        width = min(24, max(len(column), *(len(row[i]) for row in rows))) if 0 < i <= swept else None
        table.add_column(column, justify="left" if 0 < i <= swept + 1 else "right", no_wrap=i > swept,
                         overflow="fold", min_width=width)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    if not pairs:
        console.print("no held-out figures to rank by: give the recipe data.eval or data.eval_split")
    elif summary.get("best"):
        best = next(p for p in summary["points"] if p["name"] == summary["best"])
        console.print(f"best by {select['metric']}: {summary['best']} in {best['output_dir']}", markup=False)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def judge_summary_rows(result: dict) -> list[tuple[str, str]]:
    """A judged win rate as (label, value) lines, for the console and the HTML report alike."""
    interval, lengths, settings, judge = result["interval"], result["mean_length"], result["settings"], result["judge"]
    kind = "reward model" if judge["kind"] == "reward" else "language model, asked in both orders"
    decoding = "greedy" if settings["decoding"] == "greedy" else \
        f"sampled (temperature {settings['temperature']}, top-p {settings['top_p']}, seed {settings['seed']})"
    return [
        ("tuned", result["tuned"]),
        ("against", result["against"]),
        ("judge", f"{judge['path']} ({kind})"),
        ("prompts", f"{result['prompts']} from {result['prompts_source']}"),
        ("answers", f"{decoding}, at most {settings['max_new_tokens']} new tokens"),
        ("wins / ties / losses", f"{result['wins']} / {result['ties']} / {result['losses']}"),
        ("win rate (ties count half)", f"{result['win_rate']:.3f} (95% Wilson interval "
                                       f"{interval['low']:.3f} to {interval['high']:.3f})"),
        ("length-controlled win rate", f"{result['length_controlled_win_rate']:.3f}"),
        ("mean length, tuned / against", f"{lengths['tuned']:.1f} / {lengths['base']:.1f} {lengths['unit']}"),
    ]


def print_judge(console: Console, result: dict) -> None:
    table = Table(title="judged win rate", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for label, value in judge_summary_rows(result):
        table.add_row(label, escape(value))
    console.print(table)
    for title, rows in (("largest gains", result.get("largest_gains")),
                        ("largest losses", result.get("largest_losses"))):
        if not rows:
            continue
        table = Table(title=f"{title} (by the judge's margin)", title_justify="left")
        for column in ("margin", "prompt", "tuned", "against"):
            table.add_column(column, justify="right" if column == "margin" else "left", overflow="fold")
        for row in rows:
            table.add_row(f"{row['margin']:+.3f}", escape(_short(row["prompt"])),
                          escape(_short(row["tuned"] or "(empty)")), escape(_short(row["base"] or "(empty)")))
        console.print(table)
    console.print(f"every prompt, both answers and the judge's scores: {result['tuned']}/{result['rows_file']}",
                  markup=False)
