"""Where training runs and in which precision, decided from the hardware; the recipe's bf16/fp16 keys win."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from dpo_cli.core.errors import InputError, LauncherConflict

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class DevicePlan:
    """Where training runs and in which precision; TRL refuses bf16 on CPU unless told use_cpu."""

    device: str  # "cuda" or "cpu"
    gpus: int
    precision: str  # "bf16", "fp16" or "fp32"
    reason: str
    memory: int | None = None  # bytes of one device when planned for one that is not here (--gpu-memory)

    @property
    def assumed(self) -> bool:
        """Planned for a GPU this machine may not have: TRL's own checks still run as on this machine."""
        return self.memory is not None

    def trainer_fields(self) -> dict[str, Any]:
        fields = {"bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}
        if self.device == "cpu":
            fields["use_cpu"] = True
        return fields


CPU = DevicePlan("cpu", 0, "fp32", "no GPU found: CPU, float32")


def detect_hardware() -> DevicePlan:
    """The device and precision this machine offers, before the recipe has a say."""
    import torch

    if not torch.cuda.is_available():
        return CPU
    gpus = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    if torch.cuda.is_bf16_supported():
        return DevicePlan("cuda", gpus, "bf16", f"{gpus} x {name}, bf16 supported")
    return DevicePlan("cuda", gpus, "fp16", f"{gpus} x {name}, no bf16 support: fp16 with loss scaling")


def assumed_gpu(memory: int) -> DevicePlan:
    """One CUDA GPU with bf16 and ``memory`` bytes, as --gpu-memory plans a run from any machine."""
    return DevicePlan("cuda", 1, "bf16", f"planned as one CUDA GPU with {memory / 2**30:.2f} GiB (--gpu-memory), "
                                         "bf16", memory=memory)


@dataclass(frozen=True)
class Launcher:
    """What ``accelerate launch`` asked of every process (from its config), as it tells them in the environment."""

    precision: str | None = None  # the config's mixed_precision: "no", "bf16", "fp16", "fp8"; None: not launched so
    kind: str | None = None  # "DEEPSPEED" or "FSDP" when the config asks for one


@functools.cache
def launcher() -> Launcher:
    """Read once per process, before TRL's config reads (and may rewrite) the same variables."""
    def asked(name: str) -> bool:
        return os.environ.get(name, "false").lower() in ("true", "1")

    kind = "DEEPSPEED" if asked("ACCELERATE_USE_DEEPSPEED") else "FSDP" if asked("ACCELERATE_USE_FSDP") else None
    return Launcher(os.environ.get("ACCELERATE_MIXED_PRECISION"), kind)


def plan_device(trainer: dict[str, Any], hardware: DevicePlan | None = None) -> DevicePlan:
    """Pick device and mixed precision from the hardware (or an assumed GPU); the mixed precision of an Accelerate
    config the run was launched with comes next, and explicit ``bf16``/``fp16`` win over both."""
    plan = hardware or detect_hardware()
    if trainer.get("bf16"):
        return replace(plan, precision="bf16", reason=plan.reason + "; bf16 set by the recipe")
    if trainer.get("fp16"):
        return replace(plan, precision="fp16", reason=plan.reason + "; fp16 set by the recipe")
    asked = launcher().precision if hardware is None else None
    if asked in ("bf16", "fp16") and trainer.get(asked) is False:  # accelerate applies it whatever TRL's config says
        raise LauncherConflict(f"the Accelerate config this run was launched with asks for mixed_precision: {asked}, "
                               f"which accelerate applies to every process, but the recipe sets trainer.{asked}=false; "
                               f"remove trainer.{asked} from the recipe or set mixed_precision: no in the config")
    if trainer.get("bf16") is False and plan.precision == "bf16":
        return replace(plan, precision="fp32", reason=plan.reason + "; bf16 turned off by the recipe")
    if asked in ("bf16", "fp16") and asked != plan.precision:
        # TRL's config and a DeepSpeed config must agree (DeepSpeed takes the launcher's), and under DDP and FSDP
        # accelerate's autocast follows the launcher anyway: plan what will run
        if plan.device == "cpu" and asked == "fp16":
            raise LauncherConflict("the Accelerate config this run was launched with asks for mixed_precision: "
                                   "fp16, which needs a GPU, and this machine has none; set mixed_precision: bf16 "
                                   "or no")
        return replace(plan, precision=asked, reason=plan.reason + f"; {asked} from the Accelerate config "
                                                                   f"(mixed_precision)")
    return plan


def parse_size(text: str) -> int:
    """Bytes from '24GiB', '80GB', '24G' or '512MiB' (GB and G read as GiB: GPU makers' GB are GiB)."""
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"--gpu-memory '{text}' is not a size; write it like 24GiB, 80GB or 40960MiB")
    number, unit, _ = match.groups()
    size = int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))
    if size <= 0:
        raise InputError(f"--gpu-memory '{text}' must be more than zero")
    return size
