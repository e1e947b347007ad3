"""The memory plan --dry-run prints: bytes for weights, reference, gradients, optimizer and activations, with cures."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from dpo_cli.recipe.schema import Recipe
from dpo_cli.train.device import DevicePlan
from dpo_cli.train.models import lora_config, meta_model
from dpo_cli.train.stages import get_stage
from dpo_cli.train.stages.base import ASSUMED_PROMPT_TOKENS, SamplingPlan
from dpo_cli.train.trl_compat import fused_lm_head_tokens

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class _Inputs:
    """The numbers the estimate needs, read from the recipe and the model's config (no weights)."""

    params: int  # all parameters, tied ones once
    quantizable: int  # nn.Linear parameters inside the layers (not the LM head): what bitsandbytes quantizes
    linear_shapes: tuple[tuple[int, int], ...]  # (in, out) of those Linear layers, for a LoRA estimate
    weight_bytes: int  # bytes per parameter in the model's dtype
    lora_trainable: int | None  # trainable parameters with the recipe's LoRA; None for full fine-tuning
    bits: int | None  # 4 or 8 when the policy is quantized
    double_quant: bool
    reference: str  # the stage's ReferencePlan kind
    reference_bytes: int  # weights of a reference held in memory
    optim: str
    batch: int
    sequences_per_row: int  # sequences each row puts through the model at once (2 for preference pairs)
    max_length: int
    gradient_checkpointing: bool
    activation_bytes: int  # bytes per activation value under the run's precision
    hidden: int
    layers: int
    vocab: int
    trains: bool = True  # False: a data-making stage, no gradients, optimizer state or training activations
    sampling_rows: tuple[tuple[str, int, str], ...] = ()  # generation buffers and judges of a stage that samples


@dataclass
class MemoryPlan:
    rows: list[tuple[str, int, str]]  # (what, bytes, how it was counted)
    total: int
    device_bytes: int | None
    device_label: str
    suggestions: list[tuple[str, int]] = field(default_factory=list)  # (recipe change, bytes saved), largest first

    @property
    def over(self) -> bool:
        return self.device_bytes is not None and self.total > self.device_bytes


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _quantized_bytes(quantizable: int, bits: int, double_quant: bool) -> float:
    if bits == 8:
        return quantizable * 1.0
    # 4-bit: half a byte per weight plus one fp32 absmax per 64-weight block (8-bit absmax with double quantisation)
    absmax = 1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64
    return quantizable * (0.5 + absmax)


def _lora_params(shapes: tuple[tuple[int, int], ...], r: int) -> int:
    return sum(r * (i + o) for i, o in shapes)


def _optimizer_states(optim: str) -> tuple[int, int | None]:
    """(states per parameter, bytes per state or None for the parameter's dtype) of a transformers optimizer."""
    optim = optim.lower()
    if "8bit" in optim:
        return (1, 1) if "lion" in optim else (2, 1)
    if "adafactor" in optim or optim in ("sgd", "apollo_adamw") or "galore" in optim:
        return (0, None)  # factored or stateless (plain SGD): small next to the weights
    if "lion" in optim or "rmsprop" in optim:
        return (1, None)
    return (2, None)  # AdamW and friends: exp_avg and exp_avg_sq


def _compute(x: _Inputs) -> list[tuple[str, int, str]]:
    rows = []
    if x.bits:
        policy = _quantized_bytes(x.quantizable, x.bits, x.double_quant) + (x.params - x.quantizable) * x.weight_bytes
        how = f"{x.quantizable / 1e6:.1f}M weights in {x.bits}-bit, {(x.params - x.quantizable) / 1e6:.1f}M in " \
              f"{x.weight_bytes}-byte dtype"
    else:
        policy = x.params * x.weight_bytes
        how = f"{x.params / 1e6:.1f}M parameters x {x.weight_bytes} bytes"
    rows.append(("policy weights", int(policy), how))
    if x.reference_bytes:
        rows.append(("reference", x.reference_bytes, f"{x.reference}: a second, frozen model"))
    else:
        rows.append(("reference", 0, f"{x.reference}: no second model in memory during training"))
    rows += x.sampling_rows
    if not x.trains:
        return rows
    if x.lora_trainable is not None:
        trainable = x.lora_trainable
        # peft keeps adapters in fp32 over a half-precision base; TRL casts QLoRA adapters to bf16
        trainable_bytes = 2 if x.bits else 4
        what = f"{trainable / 1e6:.2f}M LoRA parameters"
    else:
        trainable, trainable_bytes, what = x.params, x.weight_bytes, f"all {x.params / 1e6:.1f}M parameters"
    rows.append(("gradients", trainable * trainable_bytes, f"{what} x {trainable_bytes} bytes"))
    states, state_bytes = _optimizer_states(x.optim)
    state_bytes = state_bytes or trainable_bytes
    rows.append(("optimizer state", trainable * states * state_bytes,
                 f"{x.optim}: {states} state(s) x {state_bytes} bytes per trainable parameter"))
    sequences = x.sequences_per_row * x.batch
    tokens = sequences * x.max_length
    # Korthikanti et al. (2022): about 34*s*b*h half-precision bytes per layer without recomputation (attention
    # scores left out: SDPA/flash kernels do not keep them); with checkpointing, each layer's input plus one layer
    per_layer = 34 * tokens * x.hidden * x.activation_bytes // 2
    if x.gradient_checkpointing:
        activations = x.layers * tokens * x.hidden * x.activation_bytes + per_layer
        how = f"{sequences} sequences x {x.max_length} tokens, gradient checkpointing"
    else:
        activations = x.layers * per_layer
        how = f"{sequences} sequences x {x.max_length} tokens x {x.layers} layers, no checkpointing"
    rows.append(("activations (estimate)", int(activations), how))
    tile = fused_lm_head_tokens()
    positions = min(tokens, tile) if tile else tokens
    how = f"fused LM head tile: {positions} positions" if tile else f"{positions} positions"
    rows.append(("logits (estimate)", positions * x.vocab * 4, f"{how} x {x.vocab} vocabulary x 4 bytes"))
    return rows


def _total(x: _Inputs) -> int:
    return sum(b for _, b, _ in _compute(x))


def _suggestions(x: _Inputs) -> list[tuple[str, int]]:
    if not x.trains:
        return []
    base = _total(x)
    candidates: list[tuple[str, _Inputs]] = []
    default_r = 16
    if x.lora_trainable is None:
        shared = x.reference == "copy"  # with LoRA the starting weights are the policy with its adapter disabled
        lora = dataclasses.replace(x, lora_trainable=_lora_params(x.linear_shapes, default_r),
                                   reference="shared" if shared else x.reference,
                                   reference_bytes=0 if shared else x.reference_bytes)
        candidates.append(("add lora: {r: 16, target_modules: all-linear} (reference shared with the policy)", lora))
        candidates.append(("add lora: and quantization: {bits: 4} (QLoRA)", dataclasses.replace(lora, bits=4)))
    elif not x.bits:
        candidates.append(("add quantization: {bits: 4} (QLoRA)", dataclasses.replace(x, bits=4)))
    if x.reference_bytes and x.reference in ("copy", "separate"):
        candidates.append(("ref_model.precompute: true (reference log-probs computed once, cached on disk)",
                           dataclasses.replace(x, reference="precomputed", reference_bytes=0)))
    if x.max_length > 64:
        half = x.max_length // 2
        candidates.append((f"trainer.max_length={half} (check how many pairs get cut with inspect-data)",
                           dataclasses.replace(x, max_length=half)))
    if not x.gradient_checkpointing:
        candidates.append(("trainer.gradient_checkpointing=true", dataclasses.replace(x, gradient_checkpointing=True)))
    if x.batch > 1:
        half = x.batch // 2
        candidates.append((f"trainer.per_device_train_batch_size={half} with gradient_accumulation_steps doubled",
                           dataclasses.replace(x, batch=half)))
    savings = [(text, base - _total(variant)) for text, variant in candidates]
    return sorted([s for s in savings if s[1] > 0], key=lambda s: -s[1])


def device_memory(plan: DevicePlan) -> tuple[int | None, str]:
    """Memory of one training device: the first GPU's, or the machine's RAM on CPU."""
    if plan.device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"{props.name} (GPU 0)"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "system RAM (CPU training)"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def _dtype_bytes(recipe_dtype: str, config) -> int:
    if recipe_dtype != "auto":
        return _DTYPE_BYTES[recipe_dtype]
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return _DTYPE_BYTES.get(str(stored).removeprefix("torch."), 4)


def _count(model) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    import torch

    params = sum(p.numel() for p in model.parameters())
    output = model.get_output_embeddings()
    shapes = tuple((m.in_features, m.out_features) for m in model.modules()
                   if isinstance(m, torch.nn.Linear) and m is not output)
    return params, sum(i * o for i, o in shapes), shapes


def _sampling_rows(sampling: SamplingPlan, recipe: Recipe, model_config, value_bytes: int,
                   weight_bytes: int) -> tuple[tuple[str, int, str], ...]:
    """The KV cache of the sequences generated at once, and the weights of the reward models that judge them."""
    heads = model_config.num_attention_heads
    width = (getattr(model_config, "num_key_value_heads", None) or heads) * \
        (getattr(model_config, "head_dim", None) or model_config.hidden_size // heads)
    layers = model_config.num_hidden_layers
    rows = [("generation (KV cache)", 2 * layers * sampling.sequences * sampling.tokens * width * value_bytes,
             f"{sampling.sequences} sequences x {sampling.tokens} tokens (prompts of up to {ASSUMED_PROMPT_TOKENS} "
             f"assumed) x {layers} layers, keys and values")]
    for path in sampling.reward_models:
        params, _, _ = _count(meta_model(recipe.model.model_copy(update={"name_or_path": path})))
        rows.append(("reward model", params * weight_bytes, f"{path}: about {params / 1e6:.1f}M parameters x "
                                                           f"{weight_bytes} bytes"))
    return tuple(rows)


def inputs_for(recipe: Recipe, plan: DevicePlan, config: Any = None) -> _Inputs:
    model = meta_model(recipe.model)
    model_config = model.config.get_text_config()
    params, quantizable, shapes = _count(model)
    weight_bytes = _dtype_bytes(recipe.model.dtype, model.config)
    lora_trainable = None
    stage = get_stage(recipe.stage)
    if recipe.lora is not None:
        from peft import get_peft_model

        lora_trainable = get_peft_model(model, lora_config(recipe.lora)).get_nb_trainable_parameters()[0]
    strategy = stage.reference(recipe)
    reference_bytes = 0
    if strategy.weights_in_memory:
        ref = recipe.ref_model
        ref_params, ref_quantizable = params, quantizable
        if ref.name_or_path:
            ref_model = meta_model(recipe.model.model_copy(update={"name_or_path": ref.name_or_path}))
            ref_params, ref_quantizable, _ = _count(ref_model)
        if ref.quantization:
            quantization = ref.quantization
            reference_bytes = int(_quantized_bytes(ref_quantizable, quantization.bits, quantization.double_quant)
                                  + (ref_params - ref_quantizable) * weight_bytes)
        else:
            reference_bytes = ref_params * weight_bytes
    activation_bytes = 2 if plan.precision in ("bf16", "fp16") else weight_bytes
    sampling = stage.sampling(recipe)
    trainer = recipe.trainer
    get = (lambda k, d: getattr(config, k, d)) if config is not None else (lambda k, d: trainer.get(k, d))
    max_length = get("max_length", 1024) or getattr(model_config, "max_position_embeddings", 2048)
    return _Inputs(
        params=params, quantizable=quantizable, linear_shapes=shapes, weight_bytes=weight_bytes,
        lora_trainable=lora_trainable, bits=recipe.quantization.bits if recipe.quantization else None,
        double_quant=bool(recipe.quantization and recipe.quantization.double_quant),
        reference=strategy.kind, reference_bytes=reference_bytes,
        optim=str(getattr(get("optim", "adamw_torch"), "value", get("optim", "adamw_torch"))),
        batch=int(get("per_device_train_batch_size", 8)), sequences_per_row=stage.sequences_per_row(recipe),
        max_length=int(max_length),
        gradient_checkpointing=bool(get("gradient_checkpointing", True)),
        activation_bytes=activation_bytes,
        hidden=int(model_config.hidden_size), layers=int(model_config.num_hidden_layers),
        vocab=int(model_config.vocab_size), trains=stage.trains,
        sampling_rows=() if sampling is None else _sampling_rows(sampling, recipe, model_config, activation_bytes,
                                                                 weight_bytes),
    )


def estimate_memory(recipe: Recipe, plan: DevicePlan, config: Any = None) -> MemoryPlan:
    """The memory plan of a recipe from the model's config alone; ``config`` is the built TRL config when known."""
    x = inputs_for(recipe, plan, config)
    rows = _compute(x)
    total = sum(b for _, b, _ in rows)
    device_bytes, label = device_memory(plan)
    result = MemoryPlan(rows, total, device_bytes, label)
    if result.over:
        result.suggestions = _suggestions(x)
    return result
