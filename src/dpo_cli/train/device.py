"""Where training runs and in which precision, decided from the hardware; the recipe's bf16/fp16 keys win."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DevicePlan:
    """Where training runs and in which precision; TRL refuses bf16 on CPU unless told use_cpu."""

    device: str  # "cuda" or "cpu"
    gpus: int
    precision: str  # "bf16", "fp16" or "fp32"
    reason: str

    def trainer_fields(self) -> dict[str, Any]:
        fields = {"bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}
        if self.device == "cpu":
            fields["use_cpu"] = True
        return fields


def plan_device(trainer: dict[str, Any]) -> DevicePlan:
    """Pick device and mixed precision from the hardware; explicit ``trainer.bf16``/``fp16`` win."""
    import torch

    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            plan = DevicePlan("cuda", gpus, "bf16", f"{gpus} x {name}, bf16 supported")
        else:
            plan = DevicePlan("cuda", gpus, "fp16", f"{gpus} x {name}, no bf16 support: fp16 with loss scaling")
    else:
        plan = DevicePlan("cpu", 0, "fp32", "no GPU found: CPU, float32")
    if trainer.get("bf16"):
        return DevicePlan(plan.device, plan.gpus, "bf16", plan.reason + "; bf16 set by the recipe")
    if trainer.get("fp16"):
        return DevicePlan(plan.device, plan.gpus, "fp16", plan.reason + "; fp16 set by the recipe")
    if trainer.get("bf16") is False and plan.precision == "bf16":
        return DevicePlan(plan.device, plan.gpus, "fp32", plan.reason + "; bf16 turned off by the recipe")
    return plan
