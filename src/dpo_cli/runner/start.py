"""What ``dpo-cli train`` does with its options: a sweep, a pipeline, a launcher started on this machine, a plan
printed (--dry-run), or one run in this process."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dpo_cli.core import console
from dpo_cli.core.errors import InputError


@dataclass(frozen=True)
class TrainOptions:
    """The options of ``dpo-cli train`` (cli.py says what each does)."""

    dry_run: bool = False
    overwrite: bool = False
    nproc: int | None = None
    accelerate_config: str | None = None
    resume: str | None = None
    resume_force: bool = False
    gpu_memory: str | None = None
    as_json: bool = False
    share_gpus: bool = False
    sweep: tuple[str, ...] = ()
    select: str | None = None
    print_commands: bool = False
    nnodes: int = 1
    node_rank: int | None = None
    master: str | None = None
    join_timeout: int = 600


def train_command(path: Path, overrides: Sequence[str], options: TrainOptions) -> int:
    """``dpo-cli train RECIPE [KEY=VALUE ...]``. Returns the exit code: 0, or that of the launcher it started."""
    from dpo_cli.train.device import assumed_gpu, parse_size
    from dpo_cli.train.recipe_load import load_recipe
    from dpo_cli.train.recipe_pipeline import is_pipeline

    o = options
    if (o.gpu_memory or o.as_json) and not o.dry_run:
        raise InputError("--gpu-memory and --json describe a plan: use them with --dry-run")
    if o.sweep or o.select or o.print_commands:
        from dpo_cli.runner.sweep import sweep_command

        sweep_command(path, overrides, o.sweep, select=o.select, print_commands=o.print_commands,
                      dry_run=o.dry_run, overwrite=o.overwrite, resume=o.resume, resume_force=o.resume_force,
                      nproc=o.nproc, accelerate_config=o.accelerate_config, share_gpus=o.share_gpus,
                      plan_only=bool(o.gpu_memory or o.as_json))
        return 0
    hardware = assumed_gpu(parse_size(o.gpu_memory)) if o.gpu_memory else None
    from dpo_cli.train import launch

    if o.nnodes > 1 and not o.nproc:
        raise InputError("--nnodes starts the launcher on this machine: give --nproc too (processes per machine)")
    nodes = launch.Nodes.parse(o.nnodes, o.node_rank, o.master, o.join_timeout)
    if is_pipeline(path):
        _pipeline(path, overrides, o, hardware)
        return 0
    recipe = load_recipe(path, overrides, trl=not o.dry_run)  # a dry run imports no TRL (train/plan.py)
    if o.nproc or o.accelerate_config or o.dry_run:
        from dpo_cli.train.device import plan_device

        device_plan = plan_device(recipe.trainer, hardware)
        device = device_plan.device
        config = launch.accelerate_config_path(o.accelerate_config) if o.accelerate_config else None
        for warning in launch.config_warnings(launch.load_accelerate_config(config), recipe, device) \
                if config else []:
            console.warn(warning)
        if o.nproc and not launch.inside_launcher():
            launch.check_processes(o.nproc, device_plan, o.share_gpus)
            recipe_args = [str(path), *overrides, *(["--overwrite"] if o.overwrite else []),
                           *(["--resume", o.resume] if o.resume else []),
                           *(["--resume-force"] if o.resume_force else [])]
            command = launch.launch_command(recipe_args, o.nproc, config, device, nodes)
            if o.dry_run and not o.as_json:
                console.stdout.print("would run: " + " ".join(command))
            elif not o.dry_run:
                return launch.relaunch(command, nodes)
    if o.dry_run:
        from dpo_cli.train.plan import plan

        # planned for the processes the run will have: --nproc on each of --nnodes, or the launcher's (a dry run
        # under torchrun), since defaults such as a precomputed reference depend on the rows each step sees
        processes = o.nproc * nodes.count if o.nproc else int(os.environ.get("WORLD_SIZE", "1"))
        run_plan, data_error = plan(recipe, hardware, processes=processes)
        _print_plans({None: run_plan}, o.as_json)
        if data_error is not None:  # the plan stands without the data; the run would not
            raise data_error
        return 0
    from dpo_cli.evidence.tables import print_run_summary
    from dpo_cli.runner.pipeline import run_stage

    result = run_stage(recipe, overwrite=o.overwrite, resume=o.resume, resume_force=o.resume_force)
    if result.is_main:
        print_run_summary(console.stdout, result)
    launch.leave_process_group()
    return 0


def _pipeline(path: Path, overrides: Sequence[str], o: TrainOptions, hardware) -> None:
    """A recipe with stages: each stage in order, complete ones skipped; or, with --dry-run, each stage's plan."""
    from dpo_cli.train.recipe_pipeline import load_pipeline

    pipeline = load_pipeline(path, list(overrides), trl=not o.dry_run)
    if o.nproc or o.accelerate_config:
        raise InputError("--nproc and --accelerate-config start one stage recipe; for a pipeline start the launcher "
                         "yourself: torchrun --nproc_per_node N -m dpo_cli train " + str(path))
    out = console.stdout
    if o.dry_run:
        from dpo_cli.train.plan import Upstream, plan

        upstream: list[Upstream] = []  # what the earlier stages will have written, not there yet
        plans, errors = {}, []
        for stage in pipeline.stages:
            plans[stage.name], data_error = plan(stage.recipe, hardware, tuple(upstream))
            errors += [data_error] if data_error is not None else []
            upstream.append(Upstream(stage.name, Path(stage.recipe.output_dir), plans[stage.name].planned_model))
        _print_plans(plans, o.as_json)
        if errors:
            raise errors[0]
        return
    from dpo_cli.core.rundir import RunDir
    from dpo_cli.evidence.tables import print_pipeline_summary, print_run_summary
    from dpo_cli.runner.pipeline import run_pipeline

    run_pipeline(pipeline, overwrite=o.overwrite, resume=o.resume, resume_force=o.resume_force,
                 on_result=lambda stage, result: print_run_summary(out, result) if result.is_main else None)
    if os.environ.get("RANK", "0") == "0":  # under a launcher, the main process reports
        print_pipeline_summary(out, RunDir(pipeline.output_dir).read_json(RunDir.PIPELINE))
        out.print(f"[bold green]pipeline done[/]: {', '.join(s.name for s in pipeline.stages)} in "
                  f"{pipeline.output_dir}; summary in pipeline.json, dpo-cli report {pipeline.output_dir} writes an "
                  "HTML report")
    from dpo_cli.train.launch import leave_process_group

    leave_process_group()


def _print_plans(plans: dict, as_json: bool) -> None:
    """--dry-run's plans: a stage recipe's (keyed None) or each pipeline stage's, as text or as one JSON object."""
    from dpo_cli.evidence.tables import print_dry_run

    out = console.stdout
    if as_json:
        document = plans[None].to_json() if None in plans else \
            {"stages": {name: run_plan.to_json() for name, run_plan in plans.items()}}
        out.out(json.dumps(document, indent=2, default=str), highlight=False)
        return
    for name, run_plan in plans.items():
        if name is not None:
            out.rule(f"stage {name} ({run_plan.recipe.stage})")
        print_dry_run(out, run_plan)
