"""Loading tokenizers and models, and deciding device and precision from the hardware."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .recipe import ModelSection, Recipe
from .tiny import resolve_builtin


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


def resolve_model_path(name: str, trust_remote_code: bool = False) -> str:
    """A local directory, a built-in, or a hub name whose config can be fetched; otherwise one clear error."""
    name = resolve_builtin(name)
    if Path(name).is_dir():
        return name
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"model '{name}' is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({reason}). On a machine with access run `huggingface-cli download {name} --local-dir DIR`, copy DIR "
            f"here and set model.name_or_path=DIR"
        ) from None
    return name


def load_tokenizer(section: ModelSection):
    from transformers import AutoTokenizer

    source = resolve_model_path(section.tokenizer or section.name_or_path, section.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=section.trust_remote_code)
    if section.chat_template:
        template = Path(section.chat_template)
        tokenizer.chat_template = template.read_text(encoding="utf-8") if template.is_file() \
            else section.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(section: ModelSection):
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(section.name_or_path, section.trust_remote_code)
    dtype = "auto" if section.dtype == "auto" else getattr(torch, section.dtype)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=section.trust_remote_code)


def load_sequence_classifier(section: ModelSection):
    """A one-output sequence classifier (a reward or value model); a causal LM's weights give its backbone."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(section.name_or_path, section.trust_remote_code)
    dtype = "auto" if section.dtype == "auto" else getattr(torch, section.dtype)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype,
                                                              trust_remote_code=section.trust_remote_code)


def load_models(recipe: Recipe):
    """The policy, as the stage's model class, and a frozen reference copy where the stage wants one."""
    from .stages import get_stage

    stage = get_stage(recipe.stage)
    load = getattr(stage, "load_policy", load_causal_lm)
    policy = load(recipe.model)
    needs_reference = getattr(stage, "needs_reference", None)
    reference = load(recipe.model) if needs_reference is not None and needs_reference(recipe) else None
    return policy, reference
