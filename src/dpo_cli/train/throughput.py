"""Tokens per second and an estimated model-FLOPs utilisation (MFU) against the device's dense bf16 peak."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s from the makers' data sheets, the values TorchTitan and TRL
# use; a name is matched as a whole word, so the more specific names come first ("H100 PCIe" before "H100")
PEAK_BF16 = (
    ("B200", 2250e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
    ("H20", 148e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 125e12),
    ("A10", 125e12), ("A6000", 154.85e12), ("MI300X", 1300e12), ("MI250X", 191.5e12),
)
REFERENCE_EACH_STEP = ("copy", "separate", "shared", "trainer-copy")
FLOPS_MODEL = ("per token: 2N forward, 4N backward (2N with LoRA/QLoRA: frozen weights get no weight gradient), "
               "2N more when the reference runs every step; N = the weights of every matrix multiply, LM head "
               "included, embedding lookup excluded; attention scores and recomputation not counted")


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its name, None when it is not in the table (CPUs included)."""
    for name, peak in PEAK_BF16:
        if re.search(rf"\b{re.escape(name)}\b", device_name, re.IGNORECASE):
            return peak
    return None


def flops_per_token(model, trains_adapter: bool, reference_each_step: bool) -> int:
    """Training FLOPs per token of the sequences a step processes (FLOPS_MODEL says what is counted)."""
    import torch

    matmul = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return matmul * (2 + (2 if trains_adapter else 4) + (2 if reference_each_step else 0))


@dataclass
class Throughput(TrainerCallback):
    """Adds tokens_per_second and mfu (a fraction of the peak) to every training log that counts tokens.

    TRL logs ``num_tokens``, the running count of non-padding tokens over all processes; the rate is taken between
    two logs (the first from the start of training), per device for the MFU.
    """

    flops_per_token: int
    device_name: str
    processes: int = 1
    peak: float | None = None
    _start: float | None = None
    _last: tuple[float, float] | None = None  # (time, tokens) at the previous log
    _final: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(cls, model, reference_kind: str, plan, processes: int) -> Throughput:
        import torch
        from peft import PeftModel

        name = torch.cuda.get_device_name(0) if plan.device == "cuda" and torch.cuda.is_available() else "CPU"
        adapter = isinstance(model, PeftModel) or getattr(model, "is_loaded_in_4bit", False) \
            or getattr(model, "is_loaded_in_8bit", False)
        return cls(flops_per_token(model, adapter, reference_kind in REFERENCE_EACH_STEP), name, processes,
                   peak_flops(name))

    def mfu(self, tokens_per_second: float) -> float | None:
        if self.peak is None:
            return None
        return tokens_per_second / self.processes * self.flops_per_token / self.peak

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self._start is None:
            return
        now = time.perf_counter()
        if "num_tokens" in logs and "train_runtime" not in logs and not any(k.startswith("eval_") for k in logs):
            when, before = self._last or (self._start, 0.0)
            rate = (logs["num_tokens"] - before) / max(now - when, 1e-9)
            self._last = (now, float(logs["num_tokens"]))
            logs["tokens_per_second"] = round(rate, 1)
            if (mfu := self.mfu(rate)) is not None:
                logs["mfu"] = round(mfu, 4)
        elif "train_runtime" in logs and self._last is not None and logs["train_runtime"]:
            rate = self._last[1] / logs["train_runtime"]
            self._final = {"tokens_per_second": round(rate, 1), "mfu": self.mfu(rate)}
            logs.update({k: round(v, 4) for k, v in self._final.items() if v is not None})

    def summary(self) -> dict[str, Any]:
        """What run.json keeps: the whole run's rate and MFU, the device's peak and how FLOPs were counted."""
        return {"tokens_per_second": self._final.get("tokens_per_second"), "mfu": self._final.get("mfu"),
                "device": self.device_name, "peak_bf16_flops": self.peak, "flops_per_token": self.flops_per_token,
                "flops_model": FLOPS_MODEL}
