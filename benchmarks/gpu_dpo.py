"""DPO on one CUDA GPU: a plain TRL script against dpo-cli's defaults and dpo-cli's explicit slow settings.

Each run is a child process of its own (a clean peak-memory count; the parent never touches the GPU, the model is
built in a child too), the variants alternate within every repeat, and the table gives steps/s, tokens/s, estimated
MFU, peak memory, the dry-run plan's error against that peak, and how far each variant's logged losses are from the
plain script's (bf16 noise is a few 1e-3). A variant that precomputes the reference pays for that pass in its figures:
TRL runs it in the trainer's constructor, outside train_runtime, so its seconds are added to the time and its forward
FLOPs to the MFU. Every dpo-cli run gets a fresh reference log-prob cache: the figures are a first run's, never a
cache hit from an earlier round.

    PYTHONPATH=src python benchmarks/gpu_dpo.py --shape qwen2.5-0.5b --max-length 1024 --tokens 836 --steps 60
    PYTHONPATH=src python benchmarks/gpu_dpo.py --shape qwen2.5-7b --batch 2 --gradient-checkpointing --lora 16

The model is built from its shape with random weights (no download); the data is --data FILE (any format dpo-cli
reads) or the bundled demo pairs with answers repeated until a sequence holds about --tokens tokens. Needs a CUDA GPU;
run it twice and keep the second run's figures (the first pays Triton's kernel compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
VARIANTS = ("plain-trl", "dpo-cli-defaults", "dpo-cli-slow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    shape = parser.add_argument_group("model shape (a named one, or any field overridden)")
    shape.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    for name in ("hidden", "intermediate", "layers", "heads", "kv-heads", "vocab"):
        shape.add_argument(f"--{name}", type=int, default=None)
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, default=None, help="preference pairs (default: demo pairs, lengthened)")
    data.add_argument("--tokens", type=int, default=836, help="about this many tokens per sequence (demo data only)")
    data.add_argument("--rows", type=int, default=300, help="training pairs taken")
    run = parser.add_argument_group("run")
    run.add_argument("--max-length", type=int, default=1024)
    run.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size")
    run.add_argument("--steps", type=int, default=60)
    run.add_argument("--repeats", type=int, default=2, help="rounds; the variants alternate within each round")
    run.add_argument("--lora", type=int, default=None, metavar="R", help="train a LoRA adapter of rank R")
    run.add_argument("--gradient-checkpointing", action="store_true")
    run.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    run.add_argument("--work", type=Path, default=Path("/tmp/dpo-cli-gpu-bench"))
    run.add_argument("--worker", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    run.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace) -> dict:
    config = dict(SHAPES[args.shape])
    for arg, key in (("hidden", "hidden_size"), ("intermediate", "intermediate_size"), ("layers", "num_hidden_layers"),
                     ("heads", "num_attention_heads"), ("kv_heads", "num_key_value_heads"), ("vocab", "vocab_size")):
        if getattr(args, arg) is not None:
            config[key] = getattr(args, arg)
    return config


def trainer_settings(args: argparse.Namespace) -> dict:
    """The TRL fields every variant shares."""
    return {"beta": 0.1, "learning_rate": 5e-5 if args.lora else 5e-6, "per_device_train_batch_size": args.batch,
            "max_length": args.max_length, "max_steps": args.steps, "logging_steps": 5, "save_strategy": "no",
            "gradient_checkpointing": args.gradient_checkpointing}


def recipe(args: argparse.Namespace, variant: str, out: Path) -> dict:
    """The dpo-cli recipe of a variant; the slow one sets the keys the defaults would decide."""
    text = {"stage": "dpo", "model": {"name_or_path": str(args.work / "model"), "dtype": "bfloat16"},
            "data": {"train": str(args.work / "pairs.jsonl")}, "trainer": trainer_settings(args),
            "output_dir": str(out / "run"), "seed": 42, "plot": False}
    if args.lora:
        text["lora"] = {"r": args.lora}
    # a cache of this run's own: the defaults precompute and cache, and a later round must not load this one's
    text["ref_model"] = {"cache_dir": str(out / "ref-cache")}
    if variant == "dpo-cli-slow":
        text["ref_model"]["precompute"] = False
        text["trainer"]["use_liger_kernel"] = False
    return text


def plan_error(plan_bytes: int | None, peak_bytes: int | None) -> float | None:
    """The plan's error against the measured peak, as a fraction (+0.10: the plan said 10 % more)."""
    if not plan_bytes or not peak_bytes:
        return None
    return plan_bytes / peak_bytes - 1


def plan_bytes(args: argparse.Namespace, variant: str, out: Path) -> tuple[int, dict]:
    """The dry-run plan (as --gpu-memory plans it) of a variant: total bytes, and the defaults it settled."""
    from dpo_cli.train.device import assumed_gpu
    from dpo_cli.train.plan import plan
    from dpo_cli.train.recipe_load import load_recipe

    path = out / "recipe.json"
    path.write_text(json.dumps(recipe(args, "dpo-cli-slow" if variant == "plain-trl" else variant, out)))
    run_plan, _ = plan(load_recipe(path), assumed_gpu(80 << 30))
    return run_plan.memory.total, {d.key: d.value for d in run_plan.defaults}


def prepare(args: argparse.Namespace) -> dict:
    """The random-weight model of the shape, its tokenizer and the data, under --work."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from dpo_cli.core.builtins import asset_path, ensure_tiny_chat
    from dpo_cli.data.load import load_training_data

    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_chat())
    config = Qwen2Config(max_position_embeddings=max(4096, args.max_length), **model_config(args))
    torch.manual_seed(0)
    with torch.device("cuda"):  # in a child process (main runs it so): the GPU is free again when it exits
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(args.work / "model")
    tokenizer.save_pretrained(args.work / "model")
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    # canonical rows (TRL's own format), which the plain script reads as they are
    rows = list(load_training_data([str(args.data or asset_path("demo/train.jsonl"))], "preference")[0])
    if args.data is None:  # lengthen every answer to about --tokens tokens with its prompt
        for row in rows:
            prompt = len(tokenizer(tokenizer.apply_chat_template(row["prompt"], tokenize=False))["input_ids"])
            for side in ("chosen", "rejected"):
                message = row[side][0]
                per_copy = max(1, len(tokenizer(message["content"])["input_ids"]))
                copies = max(1, (args.tokens - prompt) // per_copy)
                row[side] = [{**message, "content": " ".join([message["content"]] * copies)}]
    rows = (rows * (args.rows // len(rows) + 1))[:args.rows]
    (args.work / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
    info = {"params": params}
    (args.work / "prepared.json").write_text(json.dumps(info))
    return info


def plain_trl(args: argparse.Namespace, out: Path) -> tuple[dict, list]:
    """What a user writes without dpo-cli: DPOTrainer with a reference copy and the shared settings, bf16."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    path = args.work / "model"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    peft_config = None
    ref = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora, lora_alpha=2 * args.lora, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    else:
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    trainer = DPOTrainer(model=model, ref_model=ref, args=DPOConfig(output_dir=str(out / "run"), bf16=True,
                                                                   report_to="none", seed=42, **trainer_settings(args)),
                         train_dataset=load_dataset("json", data_files=str(args.work / "pairs.jsonl"), split="train"),
                         processing_class=AutoTokenizer.from_pretrained(path), peft_config=peft_config)
    metrics = trainer.train().metrics
    logs = trainer.state.log_history
    metrics["num_tokens"] = max((log.get("num_tokens", 0) for log in logs), default=0)
    return metrics, [log["loss"] for log in logs if "loss" in log]


def pass_tokens(dataset, max_length: int | None) -> int:
    """Tokens the reference pass scores over TRL's tokenized rows: prompt + chosen and prompt + rejected, truncated."""
    limit = max_length or float("inf")
    return int(sum(min(len(p) + len(c), limit) + min(len(p) + len(r), limit)
                   for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])))


def dpo_cli_run(args: argparse.Namespace, variant: str, out: Path) -> tuple[dict, list]:
    import torch

    from dpo_cli.runner.run import train
    from dpo_cli.train import trl_compat
    from dpo_cli.train.recipe_load import load_recipe

    # time the reference pass a precomputing run makes before training (refcache.py calls it through the module)
    reference_pass = {"seconds": 0.0, "tokens": 0}
    original = trl_compat.dpo_reference_logps

    def timed(trainer, dataset, batch_size):
        started = time.perf_counter()
        result = original(trainer, dataset, batch_size)
        torch.cuda.synchronize()
        reference_pass["seconds"] += time.perf_counter() - started
        reference_pass["tokens"] += pass_tokens(dataset, trainer.args.max_length)
        return result

    trl_compat.dpo_reference_logps = timed
    path = out / "recipe.json"
    path.write_text(json.dumps(recipe(args, variant, out)))
    try:
        train(load_recipe(path), overwrite=True)
    finally:
        trl_compat.dpo_reference_logps = original
    lines = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = next(m for m in lines if m["split"] == "summary")
    summary["num_tokens"] = max((m.get("num_tokens", 0) for m in lines if m["split"] == "train"), default=0)
    summary["reference_pass_s"], summary["reference_pass_tokens"] = reference_pass["seconds"], reference_pass["tokens"]
    return summary, [m["loss"] for m in lines if m["split"] == "train"]


def worker(args: argparse.Namespace, variant: str, out: Path) -> None:
    """One run in this process; writes out/result.json."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    metrics, losses = plain_trl(args, out) if variant == "plain-trl" else dpo_cli_run(args, variant, out)
    result = {"steps": args.steps, "runtime_s": metrics["train_runtime"], "num_tokens": metrics["num_tokens"],
              "reference_pass_s": metrics.get("reference_pass_s", 0.0),
              "reference_pass_tokens": metrics.get("reference_pass_tokens", 0),
              "losses": losses, "peak": torch.cuda.max_memory_allocated(),
              "wall_s": time.perf_counter() - started, "device": torch.cuda.get_device_name(0)}
    (out / "result.json").write_text(json.dumps(result))


def rates(result: dict, train_flops: int, forward_flops: int, peak: float | None) -> tuple[float, float, float | None]:
    """(steps/s, tokens/s, MFU) of one run over its training and its reference pass, if it made one: the pass's time
    counts, and so do its forward FLOPs (``forward_flops`` per token) beside training's ``train_flops`` per token."""
    seconds = result["runtime_s"] + result.get("reference_pass_s", 0.0)
    flops = result["num_tokens"] * train_flops + result.get("reference_pass_tokens", 0) * forward_flops
    return result["steps"] / seconds, result["num_tokens"] / seconds, flops / seconds / peak if peak else None


def loss_gap(losses: list[float], reference: list[float]) -> float | None:
    """The largest relative difference between two runs' logged losses, step by step."""
    pairs = list(zip(losses, reference))
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs) if pairs else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args, args.worker[0], Path(args.worker[1]))
        return 0
    if args.prepare_only:
        prepare(args)
        return 0
    import torch

    from dpo_cli.train.throughput import flops_per_token, peak_flops

    if not torch.cuda.is_available():  # asks the driver; creates no CUDA context in this process
        print("gpu_dpo.py needs a CUDA GPU", file=sys.stderr)
        return 2
    command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
    if subprocess.run([*command, "--prepare-only"], env=os.environ.copy()).returncode != 0:
        print("building the model and data failed", file=sys.stderr)
        return 1
    info = json.loads((args.work / "prepared.json").read_text())
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    plans = {}
    for variant in args.variants:
        out = args.work / "plans" / variant
        out.mkdir(parents=True, exist_ok=True)
        plans[variant] = plan_bytes(args, variant, out)
    for round_ in range(args.repeats):
        for variant in args.variants:  # alternating: a slow spell of the machine hits every variant alike
            out = args.work / f"{variant}-{round_}"
            shutil.rmtree(out / "ref-cache", ignore_errors=True)  # an earlier invocation's, in the same --work
            out.mkdir(parents=True, exist_ok=True)
            done = subprocess.run([*command, "--worker", variant, str(out)], env=os.environ.copy())
            if done.returncode != 0:
                print(f"{variant} round {round_} failed (exit {done.returncode})", file=sys.stderr)
                continue
            runs[variant].append(json.loads((out / "result.json").read_text()))
    device = next((r["device"] for rs in runs.values() for r in rs), None)
    if device is None:
        print("every run failed", file=sys.stderr)
        return 1
    peak = peak_flops(device)
    print(f"{device}; {info['params'] / 1e6:.1f}M parameters; batch {args.batch}, max_length {args.max_length}, "
          f"{args.steps} steps, {args.repeats} alternating round(s); medians")
    print(f"{'variant':18} {'steps/s':>8} {'tokens/s':>9} {'MFU':>6} {'peak GiB':>9} {'plan GiB':>9} {'plan err':>9}"
          f" {'loss gap':>9}  defaults")
    plain = runs.get("plain-trl", [])
    for variant, results in runs.items():
        if not results:
            continue
        total, defaults = plans[variant]
        live = variant == "plain-trl" or not defaults.get("ref_model.precompute", False)
        train_flops = flops_per_token_of(args, live, flops_per_token)
        # a forward pass of the reference per token: what one step adds for a live reference
        forward_flops = flops_per_token_of(args, True, flops_per_token) - flops_per_token_of(args, False,
                                                                                              flops_per_token)
        measured = [rates(r, train_flops, forward_flops, peak) for r in results]
        steps, tokens = statistics.median(m[0] for m in measured), statistics.median(m[1] for m in measured)
        mfu = f"{statistics.median(m[2] for m in measured):.1%}" if peak else "unknown"
        peak_bytes = max(r["peak"] for r in results)
        error = plan_error(total, peak_bytes)
        gap = loss_gap(results[0]["losses"], plain[0]["losses"]) if plain and variant != "plain-trl" else None
        print(f"{variant:18} {steps:8.3f} {tokens:9.0f} {mfu:>6} "
              f"{peak_bytes / 2**30:9.2f} {total / 2**30:9.2f} {error:+9.1%} "
              f"{'-' if gap is None else f'{gap:.2e}':>9}  "
              f"{'' if variant == 'plain-trl' else json.dumps(defaults)}")
    return 0


def flops_per_token_of(args: argparse.Namespace, reference_each_step: bool, count) -> int:
    """FLOPs per token of the benchmark's model, as dpo-cli's Throughput counts them (on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.work / "model"))
    return count(model, bool(args.lora), reference_each_step)


if __name__ == "__main__":
    sys.exit(main())
