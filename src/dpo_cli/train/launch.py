"""Several processes: relaunch a train command through torchrun (CPU) or accelerate launch (GPU), check configs."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from dpo_cli.core import console
from dpo_cli.core.builtins import asset_path
from dpo_cli.core.errors import InputError

SHIPPED_CONFIGS = ("ddp", "fsdp2", "zero2", "zero3", "zero3-offload")


def inside_launcher() -> bool:
    """True in a process started by torchrun or accelerate launch (they set LOCAL_RANK for every worker)."""
    return "LOCAL_RANK" in os.environ


def accelerate_config_path(name_or_path: str) -> Path:
    """A shipped config by name (ddp, fsdp2, zero2, zero3, zero3-offload) or a path to one's own."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if name_or_path in SHIPPED_CONFIGS:
        return asset_path(f"accelerate/{name_or_path}.yaml")
    raise InputError(f"accelerate config '{name_or_path}' is neither a file nor a shipped config "
                     f"({', '.join(SHIPPED_CONFIGS)})")


def load_accelerate_config(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{line}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise InputError(f"{path}: not an Accelerate config (no distributed_type); make one with `accelerate config`")
    return config


def config_warnings(config: dict, recipe, device: str) -> list[str]:
    """Known bad mixes of an Accelerate config with a recipe and the hardware."""
    found = []
    kind = config.get("distributed_type")
    zero_stage = (config.get("deepspeed_config") or {}).get("zero_stage")
    if device == "cpu" and kind in {"DEEPSPEED", "FSDP", "MULTI_GPU"}:
        found.append(f"{kind} needs GPUs; on this CPU-only machine --nproc runs torchrun with gloo instead")
    # only where the reference plan is a frozen copy of the policy: not precomputed, not LoRA's shared weights
    if kind == "DEEPSPEED" and zero_stage == 3 and _reference_kind(recipe) == "copy":
        found.append("ZeRO-3 with full fine-tuning keeps a frozen copy of the policy as the reference, which DeepSpeed "
                     "must shard too (slow, and an unsharded reference is a full copy per GPU); prefer LoRA, which "
                     "shares the policy's weights as the reference, or ref_model.precompute: true")
    precision = config.get("mixed_precision")
    wanted = "bf16" if recipe.trainer.get("bf16") else "fp16" if recipe.trainer.get("fp16") else None
    if precision in {"bf16", "fp16"} and wanted and precision != wanted:
        found.append(f"the config asks for {precision} mixed precision but the recipe sets trainer.{wanted}")
    return found


def _reference_kind(recipe) -> str:
    from dpo_cli.train.stages import get_stage

    return get_stage(recipe.stage).reference(recipe).kind


def check_processes(nproc: int, plan, share_gpus: bool) -> None:
    """Refuse more processes than GPUs: processes sharing one GPU split its memory and, in bf16, drift from one
    process (measured on one H100: --nproc 2 losses 4 % off a single process by step 2)."""
    if plan.device != "cuda" or plan.assumed or nproc <= plan.gpus or share_gpus:
        return
    raise InputError(f"--nproc {nproc} starts {nproc} processes but this machine shows {plan.gpus} GPU(s) "
                     f"({plan.reason}); processes on one GPU share its memory and do not match a single process. Use "
                     f"--nproc {plan.gpus}, make more GPUs visible (CUDA_VISIBLE_DEVICES), or pass --share-gpus to "
                     f"start them anyway")


def _script(name: str) -> str | None:
    """A console script of this Python environment first (what the user installed), then anything on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def launch_command(recipe_args: list[str], nproc: int, config: Path | None, device: str) -> list[str]:
    """The command that starts ``nproc`` workers, each running ``dpo-cli train <recipe_args>``."""
    tail = ["-m", "dpo_cli", "train", *recipe_args]
    if device == "cpu":
        launcher = _script("torchrun")
        head = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
        return [*head, "--nproc_per_node", str(nproc), *tail]
    launcher = _script("accelerate")
    head = [launcher, "launch"] if launcher else [sys.executable, "-m", "accelerate.commands.launch"]
    config_args = ["--config_file", str(config)] if config else []
    return [*head, *config_args, "--num_processes", str(nproc), *tail]


def relaunch(command: list[str]) -> int:
    console.note("running: " + shlex.join(command))
    return subprocess.run(command).returncode
