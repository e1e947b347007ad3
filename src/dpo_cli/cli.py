"""The dpo-cli command line: each command parses its options, then calls one function elsewhere."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dpo_cli.core import console
from dpo_cli.core.errors import DpoCliError, Interrupted

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


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False):
    _state["debug"] = debug or _env_debug()


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="Dotted overrides such as trainer.beta=0.2 output_dir=/tmp/run.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help=(
        "Check the recipe and every data row and plan the run, memory included; load no weights, import no TRL "
        "trainer (TRL's own config checks run when training starts)."))] = False,
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
    gpu_memory: Annotated[Optional[str], typer.Option(
        "--gpu-memory", help="With --dry-run: plan as on one CUDA GPU of this size (24GiB, 80GB), from any machine.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the whole plan as one JSON object.")
                       ] = False,
    share_gpus: Annotated[bool, typer.Option(
        "--share-gpus", help="Let --nproc start more processes than there are GPUs (they share GPUs).")] = False,
    sweep: Annotated[Optional[list[str]], typer.Option(
        "--sweep", help="KEY=V1,V2,...: run every combination, one point at a time, into output_dir/<KEY=V,...>; "
        "repeatable.", show_default=False)] = None,
    select: Annotated[Optional[str], typer.Option(
        "--select", help="With --sweep: rank the points by this held-out figure (eval.accuracy, eval.margin, "
        "eval.logprob_accuracy, eval.kl, ...; :min or :max sets the order). Default: eval.accuracy.",
        show_default=False)] = None,
    print_commands: Annotated[bool, typer.Option(
        "--print-commands", help="With --sweep: print one dpo-cli train line per point (for a job array) instead.")
    ] = False,
    nnodes: Annotated[int, typer.Option(
        "--nnodes", min=1, help="With --nproc: machines in the job; run the same command on each.")] = 1,
    node_rank: Annotated[Optional[int], typer.Option(
        "--node-rank", min=0, help="With --nnodes: this machine's rank, 0 on the one named by --master.",
        show_default=False)] = None,
    master: Annotated[Optional[str], typer.Option(
        "--master", help="With --nnodes: HOST:PORT of node 0, reachable from every node.", show_default=False)] = None,
    join_timeout: Annotated[int, typer.Option(
        "--join-timeout", min=1, help="With --nnodes: seconds to wait for every node to join before giving up.")
                            ] = 600,
):
    """Train from a recipe: dpo-cli train recipe.yaml [section.key=value ...]."""
    from dpo_cli.runner.start import TrainOptions, train_command

    code = train_command(recipe, overrides or [], TrainOptions(
        dry_run=dry_run, overwrite=overwrite, nproc=nproc, accelerate_config=accelerate_config, resume=resume,
        resume_force=resume_force, gpu_memory=gpu_memory, as_json=as_json, share_gpus=share_gpus,
        sweep=tuple(sweep or ()), select=select, print_commands=print_commands, nnodes=nnodes, node_rank=node_rank,
        master=master, join_timeout=join_timeout))
    if code:
        raise typer.Exit(code)


def _positive_tokens(max_length: Optional[int]) -> None:
    """--max-length at or below zero would count every row as too long (or truncate everything away)."""
    if max_length is not None and max_length <= 0:
        from dpo_cli.core.errors import InputError

        raise InputError(f"--max-length must be a positive number of tokens (got {max_length})")


@app.command("eval")
def eval_(
    model_or_run: Annotated[str, typer.Argument(help="A run directory, or a model (directory or hub name).",
                                                show_default=False)],
    data: Annotated[Optional[str], typer.Option("--data", help="Preference pairs to score (default: the run's "
                                                "held-out data); with --judge, rows whose prompts are answered.",
                                                show_default=False)] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference model (default: the run's starting model).",
                                               show_default=False)] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="DPO beta (default: the run's).",
                                                  show_default=False)] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Truncate pairs to this many tokens.",
                                                      show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
    judge: Annotated[Optional[str], typer.Option(
        "--judge", help="Judged win rate of the run's answers against its base: a reward model, or a causal LM asked "
        "in both orders.", show_default=False)] = None,
    against: Annotated[Optional[str], typer.Option(
        "--against", help="With --judge: the model or run to beat (default: the run's starting model).",
        show_default=False)] = None,
    also_against: Annotated[Optional[list[str]], typer.Option(
        "--also-against", help="With --judge: one more model or run to judge against on the same prompts "
        "(repeatable).", show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        "--prompts", help="With --judge: prompts (JSON lines with a prompt, or one per line) instead of the run's "
        "held-out data.", show_default=False)] = None,
    n: Annotated[Optional[int], typer.Option("-n", min=1, help="With --judge: how many prompts (default 100).",
                                             show_default=False)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        "--max-new-tokens", min=1, help="With --judge: answer length limit (default 128).", show_default=False)
    ] = None,
    sample: Annotated[bool, typer.Option("--sample", help="With --judge: sample the answers (temperature 0.7, top-p "
                                         "0.9) instead of greedy decoding.")] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="With --judge: sampling seed (default 0).",
                                                show_default=False)] = None,
    judge_template: Annotated[Optional[str], typer.Option(
        "--judge-template", help="With a judge LM: the question, with {prompt}, {answer_a} and {answer_b}.",
        show_default=False)] = None,
):
    """Score held-out pairs: preference accuracy, margins, log-probs, KL to the reference, length bias; or, with
    --judge, a judged win rate of the run against its base."""
    from dpo_cli.core.errors import InputError

    judge_only = {"--against": against, "--also-against": also_against or None, "--prompts": prompts, "-n": n,
                  "--max-new-tokens": max_new_tokens,
                  "--sample": sample or None, "--seed": seed, "--judge-template": judge_template}
    if judge is None and any(v is not None for v in judge_only.values()):
        given = [k for k, v in judge_only.items() if v is not None]
        raise InputError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --judge")
    if judge is not None:
        if ref is not None or beta is not None or max_length is not None:
            raise InputError("--ref, --beta and --max-length score pairs; with --judge use --against MODEL_OR_RUN")
        from dpo_cli.evidence.judge import JudgeSettings, evaluate_with_judge

        settings = JudgeSettings(**{k: v for k, v in (("n", n), ("max_new_tokens", max_new_tokens), ("seed", seed))
                                    if v is not None}, sample=sample)
        results = evaluate_with_judge(model_or_run, judge, settings, against=against, prompts=prompts, data=data,
                                      template=judge_template, also=also_against or ())
        if as_json:  # the shape run.json's evaluation holds them in
            import json

            typer.echo(json.dumps({"judge": results[0], **({"judge_also": results[1:]} if results[1:] else {})},
                                  indent=2, ensure_ascii=False))
        else:
            from dpo_cli.evidence.tables import print_judge

            for result in results:
                print_judge(console.stdout, result)
        return
    from dpo_cli.evidence.evaluate import resolve_target, run_eval

    _positive_tokens(max_length)
    result = run_eval(resolve_target(model_or_run, data=data, ref=ref, beta=beta, max_length=max_length))
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        from dpo_cli.evidence.tables import print_eval

        print_eval(console.stdout, result)


@app.command()
def compare(
    tuned: Annotated[Path, typer.Option("--tuned", help="Run directory (or saved model) of the tuned model.",
                                        show_default=False)],
    base: Annotated[Optional[str], typer.Option("--base", help="Base model (default: the run's starting model).",
                                                show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="Prompts: JSON lines with a prompt (and "
                                                    "images, for a vision-language model), or one per line.",
                                                    show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Preference data: its pairs' prompts.",
                                                show_default=False)] = None,
    n: Annotated[int, typer.Option("-n", help="How many prompts.", min=1)] = 5,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
):
    """Greedy and sampled generations of base and tuned side by side; also written to RUN/compare.md."""
    from dpo_cli.core.errors import InputError
    from dpo_cli.core.rundir import RunDir
    from dpo_cli.evidence.compare import Settings, comparison_table, data_prompts, read_prompts
    from dpo_cli.evidence.compare import compare as run_compare

    if (prompts is None) == (data is None):
        raise InputError("give exactly one of --prompts FILE or --data FILE")
    texts = read_prompts(prompts, n, images=True) if prompts else data_prompts(data, n)
    result = run_compare(tuned, texts, base=base, settings=Settings(max_new_tokens=max_new_tokens))
    console.stdout.print(comparison_table(result))
    console.stdout.print(f"written to {tuned / RunDir.COMPARE_MD}")


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="A reward model: the output_dir of a reward stage, or a hub name.",
                                         show_default=False)],
    data: Annotated[str, typer.Option("--data", help="Rows to score: pairs (both sides scored), conversations or "
                                      "prompt/completion rows.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write every row with its score(s) as "
                                                   "JSON lines here instead of printing them.",
                                                   show_default=False)] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Truncate to this many tokens.",
                                                      show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
):
    """Score text with a reward model: one score per row, or chosen and rejected scores per pair."""
    from dpo_cli.evidence.reward_scores import pairwise_accuracy, score_file, scores_table, write_scores

    _positive_tokens(max_length)
    scored = score_file(model, data, max_length=max_length, output=output, force=force)
    if output is not None:
        write_scores(scored, output)
        console.stdout.print(f"{len(scored.rows)} rows scored, written to {output}")
    else:
        console.stdout.print(scores_table(scored))
    accuracy = pairwise_accuracy(scored)
    if accuracy is not None:
        console.stdout.print(f"pairwise accuracy (chosen scored above rejected): {accuracy:.3f}")


@app.command()
def plot(run_dir: Annotated[Path, typer.Argument(help="A run directory (holding metrics.jsonl).", show_default=False)]):
    """PNG curves of loss, rewards, margins, accuracies, learning rate and eval metrics into RUN_DIR/plots."""
    from dpo_cli.evidence.plots import plot_run

    for path in plot_run(run_dir):
        console.stdout.print(str(path))


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="A run directory; or several, or a sweep's directory, for one page side by side.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Default: RUN_DIR/report.html (several "
                                                   "runs: required).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --output file (RUN_DIR/report.html is always "
                                        "replaced).")] = False,
):
    """One self-contained HTML report: recipe, versions, data, curves, evaluation, generations; or runs side by side."""
    from dpo_cli.evidence.runs_report import write_reports

    console.stdout.print(f"report written to {write_reports(run_dirs, output, force=force)}")


@app.command("convert-data")
def convert_data(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Input files, directories or globs.",
                                                          show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .jsonl, .jsonl.gz, .json or .parquet.",
                                         show_default=False)] = ...,
    format: Annotated[Optional[str], typer.Option(help="Input format (default: detected per file).")] = None,
    to: Annotated[str, typer.Option(help="Output shape: trl (TRL's rows of the data's own type), messages, "
                                         "prompt-completion, text, alpaca, sharegpt, kto, prompt-only.")] = "trl",
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="Rename: CANONICAL=COLUMN (COLUMN may be a "
                                                      "dotted path), repeatable.")] = None,
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
    allow_empty: Annotated[bool, typer.Option(help="Write the output even when no row is left (else exit 2).")
                           ] = False,
    preference: Annotated[Optional[str], typer.Option(help="pku-saferlhf: better (default), safer or safe-only.",
                                                      show_default=False)] = None,
    pairs: Annotated[Optional[str], typer.Option(help="ranked, nectar: best-worst (default), all or threshold=X.",
                                                 show_default=False)] = None,
    registry: Annotated[Optional[str], typer.Option(help="A LLaMA-Factory dataset_info.json; with --name, read "
                                                    "that entry instead of INPUTS.", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option(help="The registry entry to read.", show_default=False)] = None,
):
    """Convert data to TRL's rows: dpo-cli convert-data in.parquet -o out.jsonl."""
    from dpo_cli.data.convert import ConvertOptions, convert, parse_map, print_summary

    summary = convert(ConvertOptions(
        inputs=inputs or [], output=output, format=format, to=to, columns=parse_map(map_ or []), keep=keep or [],
        where=where, limit=limit, shuffle=shuffle, seed=seed, dedupe=dedupe, eval_split=eval_split,
        skip_invalid=skip_invalid, rejects=rejects, force=force, preference=preference, pairs=pairs,
        allow_empty=allow_empty, registry=registry, name=name))
    print_summary(console.stdout, summary)


@app.command("inspect-data")
def inspect_data(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Data files, directories or globs.",
                                                          show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer for token lengths and samples.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Report rows longer than this (tokens).")] = None,
    format: Annotated[Optional[str], typer.Option(help="Input format (default: detected per file).")] = None,
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="Rename: CANONICAL=COLUMN, repeatable.")] = None,
    registry: Annotated[Optional[str], typer.Option(help="A LLaMA-Factory dataset_info.json (with --name).",
                                                    show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option(help="The registry entry to read.", show_default=False)] = None,
):
    """Check a data file and show its format, problems, languages and lengths; exit 2 if any row fails a check."""
    from dpo_cli.core.errors import InputError
    from dpo_cli.data.convert import parse_map
    from dpo_cli.data.inspection import inspect, print_report

    _positive_tokens(max_length)
    if max_length is not None and tokenizer is None:
        raise typer.BadParameter("--max-length counts tokens; give --tokenizer too", param_hint="--max-length")
    if bool(inputs) == (registry is not None) or (registry is None) != (name is None):
        raise InputError("name the input files, or one registry entry with --registry FILE --name NAME")
    signal = drops = None
    if tokenizer is not None:  # training's own measures, so both say the same
        from dpo_cli.evidence.template import TemplateDrops
        from dpo_cli.evidence.truncation import signal
        from dpo_cli.recipe.schema import ModelSection
        from dpo_cli.train.models import load_tokenizer

        tokenizer = load_tokenizer(ModelSection(name_or_path=tokenizer))
        drops = TemplateDrops(tokenizer)
    report = inspect(inputs or [], format=format, columns=parse_map(map_ or []), tokenizer=tokenizer,
                     max_length=max_length, registry=registry, name=name, signal=signal, template_drops=drops)
    print_report(console.stdout, report)
    if not report.clean:
        raise typer.Exit(2)


@app.command("import-recipe")
def import_recipe(
    source: Annotated[Path, typer.Argument(help="A LLaMA-Factory training YAML (llamafactory-cli train FILE).",
                                           show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The dpo-cli recipe to write.", show_default=False)],
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
):
    """Translate a LLaMA-Factory training YAML into a dpo-cli recipe, with a comment on every key."""
    from dpo_cli.train.llamafactory import import_recipe as translate

    imported = translate(source, output, force=force)
    for key, value, why in imported.unmapped:
        console.warn(f"{source}: {key}: {value} is not mapped: {why}")
    console.stdout.print(f"wrote {output}: {len(imported.values)} keys translated, {len(imported.dropped)} dropped, "
                         f"{len(imported.unmapped)} not mapped (each has a comment); check it with "
                         f"dpo-cli train {output} --dry-run")


@app.command("merge-lora")
def merge_lora(
    run_dir: Annotated[Path, typer.Argument(help="Output directory of a LoRA or QLoRA training run.",
                                            show_default=False)],
    output: Annotated[Path, typer.Option("--output", help="Directory for the merged model.", show_default=False)],
    dtype: Annotated[str, typer.Option("--dtype", help="auto (the base's stored dtype), float32, bfloat16, float16.")
                     ] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
):
    """Merge a run's LoRA adapter into its base model (never into 4-bit weights) and check the logits still match."""
    from dpo_cli.train.merge import TOLERANCE
    from dpo_cli.train.merge import merge_lora as run_merge

    result = run_merge(run_dir, output, dtype=dtype, overwrite=overwrite)
    verdict = "[green]ok[/]" if result.within_tolerance else f"[bold red]larger than expected[/] " \
                                                             f"(tolerance {TOLERANCE[result.dtype]:g})"
    console.stdout.print(f"merged {run_dir} into {result.base} in {result.dtype}: max |logit difference| merged vs "
                     f"adapter on {result.prompts} bundled prompts ({result.tokens} tokens): "
                     f"{result.max_abs_diff:.3g} {verdict}\nsaved safetensors and tokenizer to {result.output}")


def _terminated(signum, frame) -> None:
    # SIGTERM becomes an exception, so every command's cleanup (temporary files, the run record) happens on the way
    # out; train installs its own handler for the run itself
    raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


def main() -> None:
    from dpo_cli.train.trl_compat import quiet_trl_notices

    quiet_trl_notices()
    signal.signal(signal.SIGTERM, _terminated)
    if not _env_debug() and "--debug" not in sys.argv:
        import warnings

        # Library deprecation notices are for dpo-cli's developers to act on, not for someone running a recipe.
        warnings.filterwarnings("ignore", category=FutureWarning)
        # bitsandbytes' CPU backend, imported by peft, looks up a Hub kernel at import: without the optional `kernels`
        # package bitsandbytes warns, with it offline `kernels` says it skipped a trust check; neither is ours to act on
        for name in ("bitsandbytes", "kernels"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        app()
    except (DpoCliError, Interrupted) as exc:
        if _state["debug"] or _env_debug():
            raise
        if not (exc.every_rank and os.environ.get("RANK", "0") != "0"):  # the main process says it once
            console.error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C where no handler of ours turned it into Interrupted: said, not silent
        console.error("stopped by SIGINT")
        sys.exit(130)
    except SystemExit as exc:  # typer turns a KeyboardInterrupt inside a command into a silent exit 130
        if exc.code == 130 and _caused_by_ctrl_c(exc):
            console.error("stopped by SIGINT")
        raise


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    seen = exc.__cause__ or exc.__context__
    while seen is not None and not isinstance(seen, KeyboardInterrupt):
        seen = seen.__cause__ or seen.__context__
    return seen is not None


if __name__ == "__main__":
    main()
