"""The memory plan --dry-run prints: the bytes a training step holds at its peak, item by item, with cheap fixes.

The activations are counted tensor by tensor: what PyTorch's autograd keeps for the backward pass of a decoder layer
(HF RMSNorm, SDPA attention, a gated MLP) in the dtypes the run really has. The model was checked against peaks
measured on an H100 (docs/models.md lists them); tests/test_memory.py keeps it within 20 % of each.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from dpo_cli.recipe.schema import Recipe
from dpo_cli.train.device import DevicePlan
from dpo_cli.train.models import lora_config, meta_model
from dpo_cli.train.stages import get_stage
from dpo_cli.train.stages.base import ASSUMED_PROMPT_TOKENS, SamplingPlan, TrainingStage
from dpo_cli.train.trl_compat import fused_lm_head_tokens, fused_lm_head_vocab_chunk

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The caching allocator rounds blocks up and fragments; torch.cuda.max_memory_allocated does not see it, the device
# does. A share of the memory that comes and goes within a step (not measured on its own: an estimate).
ALLOCATOR_SHARE = 0.05
# Memory a CUDA process uses outside PyTorch's allocator (context, cuBLAS and Triton workspaces): kept free when the
# plan decides whether it fits.
CUDA_CONTEXT = 1 << 30


@dataclass(frozen=True)
class _Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated: bool  # a gated MLP (gate, up, down: Llama, Qwen, Mistral) rather than up and down (GPT-2)


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
    upcast: bool  # quantization.upcast: every unquantized weight in float32 (peft's k-bit preparation)
    reference: str  # the stage's ReferencePlan kind
    reference_bytes: int  # weights of a reference held in memory
    optim: str
    batch: int
    accumulation: int
    sequences_per_row: int  # sequences each row puts through the model at once (2 for preference pairs)
    max_length: int
    gradient_checkpointing: bool
    autocast_bytes: int | None  # 2 under bf16/fp16 mixed precision; None without autocast
    liger: bool
    shape: _Shape
    head_tile: tuple[int, int] | None  # TRL's fused LM head tile (positions, vocabulary columns); None: full logits
    cuda: bool
    trains: bool = True  # False: a data-making stage, no gradients, optimizer state or training activations
    sampling_rows: tuple[tuple[str, int, str], ...] = ()  # generation buffers and judges of a stage that samples
    vision: _Vision | None = None  # a vision-language model's vision tower and projector


@dataclass(frozen=True)
class _Vision:
    """The vision side of a vision-language model, from its config (one image per row assumed)."""

    params: int  # vision tower and projector parameters (inside _Inputs.params)
    positions: int | None  # positions the tower runs per image (patches and a class token); None when not derivable
    tokens: int | None  # image tokens each image puts into the language model's sequence
    layers: int
    hidden: int
    intermediate: int
    trained: bool  # gradients flow through the tower (full fine-tuning, or LoRA targets inside it)


@dataclass
class MemoryPlan:
    rows: list[tuple[str, int, str]]  # (what, bytes, how it was counted)
    total: int
    device_bytes: int | None
    device_label: str
    reserve: int = 0  # kept free for what PyTorch does not allocate (the CUDA context)
    suggestions: list[tuple[str, int, bool]] = field(default_factory=list)  # (change, bytes saved, fits alone)

    @property
    def over(self) -> bool:
        return self.device_bytes is not None and self.total + self.reserve > self.device_bytes

    @property
    def largest(self) -> tuple[str, int]:
        what, size, _ = max(self.rows, key=lambda row: row[1])
        return what, size

    def to_json(self) -> dict[str, Any]:
        return {"total_bytes": self.total, "device_bytes": self.device_bytes, "device": self.device_label,
                "reserved_outside_pytorch_bytes": self.reserve, "fits": None if self.device_bytes is None
                else not self.over, "largest": self.largest[0],
                "items": [{"what": what, "bytes": size, "counted_as": how} for what, size, how in self.rows],
                "fixes": [{"change": change, "saves_bytes": saving, "fits_alone": fits}
                          for change, saving, fits in self.suggestions]}


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


def _dtypes(x: _Inputs) -> tuple[int, int, int]:
    """(residual, compute, linear output) bytes per value.

    The residual stream has the embedding's dtype (float32 once upcast for k-bit training); under autocast matmuls
    compute in half precision; bitsandbytes' layers return their input's dtype, nn.Linear the autocast dtype.
    """
    residual = 4 if x.upcast else x.weight_bytes
    compute = x.autocast_bytes or x.weight_bytes
    return residual, compute, residual if x.bits else compute


def _saved_inputs(x: _Inputs, size: int, count: int, dtype: int) -> int:
    """Bytes per token the ``count`` projections reading one ``size``-wide input keep for their backward."""
    residual, compute, _ = _dtypes(x)
    if x.lora_trainable is None:  # a trained nn.Linear keeps its input, cast once per layer under autocast
        copies = x.autocast_bytes is not None and dtype != compute
        return (count if copies else 1) * size * (compute if copies else dtype)
    # LoRA: the frozen base keeps nothing; each adapter casts its input to its own dtype (float32 over a half
    # precision base, as peft keeps it; bf16 for QLoRA, as TRL casts it), and autocast casts that once more
    adapter = 2 if x.bits else 4
    copies = dtype != adapter or (x.autocast_bytes is not None and adapter != compute)
    kept = (x.autocast_bytes or adapter) if copies else dtype
    return (count if copies else 1) * size * kept


def _per_token_layer(x: _Inputs) -> int:
    """Bytes one decoder layer keeps for its backward pass, per token."""
    s = x.shape
    residual, compute, linear = _dtypes(x)
    q = s.heads * s.head_dim
    trained_norm = x.lora_trainable is None
    # RMSNorm keeps its input upcast to float32 (and its normalised output when its weight trains); Liger's kernel
    # keeps the input and one float32 per token
    norm = (residual * s.hidden + 4) if x.liger else 4 * s.hidden + (residual * s.hidden if trained_norm else 0)
    attention_dtype = compute if x.autocast_bytes else linear
    # SDPA keeps q, k and v (k and v repeated to every head: a padded batch carries a mask, and transformers then
    # expands grouped keys), its output and a float32 log-sum-exp per head
    attention = 4 * q * attention_dtype + 4 * s.heads
    inputs = (_saved_inputs(x, s.hidden, 3, residual) + _saved_inputs(x, q, 1, attention_dtype)
              + _saved_inputs(x, s.hidden, 2 if s.gated else 1, residual)
              + _saved_inputs(x, s.intermediate, 1, linear))
    # gated MLP: SiLU keeps the gate, the product keeps SiLU's output and up (Liger's SwiGLU: gate and up only)
    mlp = (2 if x.liger else 3) * s.intermediate * linear if s.gated else s.intermediate * linear
    return 2 * norm + attention + inputs + mlp


def _head_bytes(x: _Inputs, tokens: int) -> tuple[int, str]:
    s = x.shape
    residual, compute, _ = _dtypes(x)  # the head's weight and its input hidden states are in the residual's dtype
    if x.head_tile is None:  # no fused LM head in this TRL: the logits exist whole, upcast for the log-softmax
        return tokens * s.vocab * 4, f"{tokens} positions x {s.vocab} vocabulary x 4 bytes (whole logits)"
    positions, columns = min(tokens, x.head_tile[0]), min(s.vocab, x.head_tile[1])
    size = positions * columns * compute + tokens * s.hidden * 4  # one tile, the float32 gradient of the hidden
    how = f"fused LM head: a {positions} x {columns} tile, float32 gradient of {tokens} hidden states"
    if x.lora_trainable is None:  # the head's own gradient, accumulated in float32 and cast to the weights' dtype
        size += s.vocab * s.hidden * (4 + x.weight_bytes)
        how += ", float32 gradient of the head"
    if residual != compute:  # each tile casts a slice of the head and of the hidden states to the compute dtype
        size += (columns + positions) * s.hidden * compute
    return size, how


def _compute(x: _Inputs) -> list[tuple[str, int, str]]:
    s = x.shape
    residual, _, linear = _dtypes(x)
    rows = []
    if x.bits:
        unquantized = (x.params - x.quantizable) * (4 if x.upcast else x.weight_bytes)
        policy = _quantized_bytes(x.quantizable, x.bits, x.double_quant) + unquantized
        how = f"{x.quantizable / 1e6:.1f}M weights in {x.bits}-bit, {(x.params - x.quantizable) / 1e6:.1f}M in " \
              f"{4 if x.upcast else x.weight_bytes}-byte dtype"
    else:
        policy = x.params * x.weight_bytes
        how = f"{x.params / 1e6:.1f}M parameters x {x.weight_bytes} bytes"
    if x.vision is not None:
        how += f" ({x.vision.params / 1e6:.2f}M of them in the vision tower and projector)"
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
    tokens = sequences * x.max_length  # TRL pads a batch to its longest sequence: the peak comes at max_length
    layer = _per_token_layer(x)
    final_norm = 4 * s.hidden + residual * s.hidden  # the last norm, and the hidden states the LM head keeps
    kernels = " with Liger's kernels" if x.liger else ""
    if x.gradient_checkpointing:  # each layer's input, and one layer recomputed at a time in the backward pass
        per_token = s.layers * s.hidden * residual + layer + final_norm
        how = f"{sequences} sequences x {x.max_length} tokens: {s.layers} layer inputs + one layer " \
              f"({layer} bytes/token){kernels}, gradient checkpointing"
    else:
        per_token = s.layers * layer + final_norm
        how = f"{sequences} sequences x {x.max_length} tokens x {s.layers} layers x {layer} bytes{kernels}"
    if x.vision is not None and x.vision.tokens is not None:
        how += f"; each image takes {x.vision.tokens} of a sequence's tokens"
    rows.append(("activations (estimate)", tokens * per_token, how))
    if x.vision is not None:
        rows.append(_vision_activations(x, sequences))
    if x.reference in ("copy", "separate", "trainer-copy", "shared"):
        # run without gradients after the policy's forward, while its activations are held: the residual stream
        # and the gated MLP's three intermediate tensors of one layer at a time
        ref = tokens * (2 * residual * s.hidden + 3 * linear * s.intermediate)
        rows.append(("reference forward (estimate)", ref, f"{x.reference} reference, no gradients: one layer's "
                                                          f"largest tensors for {tokens} tokens"))
    else:
        rows.append(("reference forward (estimate)", 0, f"{x.reference}: no reference forward during training"))
    head, how = _head_bytes(x, tokens)
    rows.append(("LM head (estimate)", head, how))
    transient = sum(size for what, size, _ in rows if "(estimate)" in what)
    rows.append(("allocator overhead (estimate)", int(transient * ALLOCATOR_SHARE),
                 f"{ALLOCATOR_SHARE:.0%} of the memory that comes and goes within a step (block rounding, "
                 f"fragmentation)"))
    return rows


def _vision_activations(x: _Inputs, images: int) -> tuple[str, int, str]:
    """What the vision tower keeps for its backward pass: like a decoder layer's norms, attention and MLP inputs
    (about 8 hidden-wide and 2 intermediate-wide values per position), when gradients flow through it."""
    v = x.vision
    what = "vision tower activations (estimate)"
    if not v.trained:
        return what, 0, "frozen (LoRA adapts the language model only): no gradients, nothing kept for a backward pass"
    if v.positions is None:
        return what, 0, "unknown: the vision config gives no image and patch size to count positions from"
    _, compute, _ = _dtypes(x)
    per_position = (8 * v.hidden + 2 * v.intermediate) * compute
    return what, images * v.positions * v.layers * per_position, (
        f"{images} images (one per sequence assumed) x {v.positions} positions x {v.layers} layers x "
        f"{per_position} bytes")


def _vision(model, params_under_lora) -> _Vision | None:
    from dpo_cli.train.vision import vision_params

    config = getattr(model.config, "vision_config", None)
    if config is None:
        return None
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    patches = (int(image) // int(patch)) ** 2 if image and patch and not isinstance(image, (list, tuple)) else None
    strategy = getattr(model.config, "vision_feature_select_strategy", None)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    return _Vision(params=vision_params(model), positions=patches + 1 if patches else None,
                   tokens=(patches if strategy == "default" else patches + 1) if patches else None,
                   layers=int(getattr(config, "num_hidden_layers", 0) or 0), hidden=hidden,
                   intermediate=int(getattr(config, "intermediate_size", 0) or 4 * hidden),
                   trained=params_under_lora)


def _total(x: _Inputs) -> int:
    return sum(b for _, b, _ in _compute(x))


# Changes that lower the peak, cheapest first: what each costs in speed or in what is trained
def _candidates(x: _Inputs) -> list[tuple[str, _Inputs]]:
    found: list[tuple[str, _Inputs]] = []
    # TRL precomputes no reference log-probs for image rows
    if x.reference in ("copy", "separate", "shared", "trainer-copy") and x.vision is None:
        found.append(("ref_model.precompute: true (no reference in memory or forward; faster over an epoch)",
                      dataclasses.replace(x, reference="precomputed", reference_bytes=0)))
    if x.cuda and not x.liger:
        found.append(("trainer.use_liger_kernel: true (pip install 'dpo-cli[fast]'; also faster)",
                      dataclasses.replace(x, liger=True)))
    if not x.gradient_checkpointing:
        found.append(("trainer.gradient_checkpointing: true (about a third slower)",
                      dataclasses.replace(x, gradient_checkpointing=True)))
    if x.batch > 1:
        half = x.batch // 2
        found.append((f"trainer.per_device_train_batch_size: {half} with gradient_accumulation_steps: "
                      f"{x.accumulation * 2} (same effective batch, slower)",
                      dataclasses.replace(x, batch=half, accumulation=x.accumulation * 2)))
    if x.lora_trainable is None:
        shared = x.reference == "copy"  # with LoRA the starting weights are the policy with its adapter disabled
        lora = dataclasses.replace(x, lora_trainable=_lora_params(x.linear_shapes, 16),
                                   reference="shared" if shared else x.reference,
                                   reference_bytes=0 if shared else x.reference_bytes)
        found.append(("lora: {r: 16} (trains an adapter, not every weight; the reference is then shared)", lora))
        found.append(("lora: and quantization: {bits: 4} (QLoRA: a 4-bit base)", dataclasses.replace(lora, bits=4)))
    elif not x.bits:
        found.append(("quantization: {bits: 4} (QLoRA: a 4-bit base)", dataclasses.replace(x, bits=4)))
    if x.max_length > 64:
        found.append((f"trainer.max_length: {x.max_length // 2} (cuts long pairs: check with inspect-data)",
                      dataclasses.replace(x, max_length=x.max_length // 2)))
    return found


def _suggestions(x: _Inputs, room: int | None) -> list[tuple[str, int, bool]]:
    if not x.trains:
        return []
    base = _total(x)
    found = []
    for text, variant in _candidates(x):
        total = _total(variant)
        if total < base:
            found.append((text, base - total, room is not None and total <= room))
    return found


def device_memory(plan: DevicePlan) -> tuple[int | None, str]:
    """Memory of one training device: the assumed GPU's, the first GPU's, or the machine's RAM on CPU."""
    if plan.memory is not None:
        return plan.memory, "one CUDA GPU (--gpu-memory)"
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None, "unknown"
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


def _shape(model) -> _Shape:
    config = model.config.get_text_config()
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return _Shape(hidden=hidden, layers=int(config.num_hidden_layers), heads=heads,
                  kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
                  head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
                  intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
                  vocab=int(config.vocab_size), gated=bool(names & {"gate_proj", "gate_up_proj", "w1", "w3"}))


def _sampling_rows(sampling: SamplingPlan, recipe: Recipe, shape: _Shape, value_bytes: int,
                   weight_bytes: int) -> tuple[tuple[str, int, str], ...]:
    """The KV cache of the sequences generated at once, and the weights of the reward models that judge them."""
    width = shape.kv_heads * shape.head_dim
    rows = [("generation (KV cache)", 2 * shape.layers * sampling.sequences * sampling.tokens * width * value_bytes,
             f"{sampling.sequences} sequences x {sampling.tokens} tokens (prompts of up to {ASSUMED_PROMPT_TOKENS} "
             f"assumed) x {shape.layers} layers, keys and values")]
    for path in sampling.reward_models:
        params, _, _ = _count(meta_model(recipe.model.model_copy(update={"name_or_path": path})))
        rows.append(("reward model", params * weight_bytes, f"{path}: about {params / 1e6:.1f}M parameters x "
                                                           f"{weight_bytes} bytes"))
    return tuple(rows)


def inputs_for(recipe: Recipe, plan: DevicePlan, config: Any = None) -> _Inputs:
    model = meta_model(recipe.model)
    params, quantizable, shapes = _count(model)
    weight_bytes = _dtype_bytes(recipe.model.dtype, model.config)
    lora_trainable = None
    stage = get_stage(recipe.stage)
    vision_trained = True
    if recipe.lora is not None:
        from peft import get_peft_model

        from dpo_cli.train.models import language_model_prefix

        prefix = language_model_prefix(model)
        peft_model = get_peft_model(model, lora_config(recipe.lora, model=model))
        lora_trainable = peft_model.get_nb_trainable_parameters()[0]
        # adapters named outside the language model (lora.target_modules: all-linear) train the vision tower too
        vision_trained = prefix is not None and any(
            "lora_" in name and f".{prefix}." not in f".{name}" for name, _ in peft_model.named_parameters())
    vision = _vision(model, vision_trained)
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
    trainer = recipe.trainer
    get = (lambda k, d: getattr(config, k, d)) if config is not None else (lambda k, d: trainer.get(k, d))
    model_config = model.config.get_text_config()
    max_length = get("max_length", 1024) or getattr(model_config, "max_position_embeddings", 2048)
    tile = fused_lm_head_tokens()
    quantization = recipe.quantization
    shape = _shape(model)
    sampling = stage.sampling(recipe)
    # a stage that makes data takes no training step: its plan is weights, generation and judges
    sequences_per_row = stage.sequences_per_row(recipe) if isinstance(stage, TrainingStage) else 0
    return _Inputs(
        params=params, quantizable=quantizable, linear_shapes=shapes, weight_bytes=weight_bytes,
        lora_trainable=lora_trainable, bits=quantization.bits if quantization else None,
        double_quant=bool(quantization and quantization.double_quant),
        upcast=bool(quantization and quantization.upcast),
        reference=strategy.kind, reference_bytes=reference_bytes,
        optim=str(getattr(get("optim", "adamw_torch"), "value", get("optim", "adamw_torch"))),
        batch=int(get("per_device_train_batch_size", 8)), accumulation=int(get("gradient_accumulation_steps", 1)),
        sequences_per_row=sequences_per_row, max_length=int(max_length),
        gradient_checkpointing=bool(get("gradient_checkpointing", True)),
        autocast_bytes=2 if plan.precision in ("bf16", "fp16") else None,
        liger=bool(get("use_liger_kernel", False)), shape=shape,
        head_tile=(tile, fused_lm_head_vocab_chunk() or 1 << 62) if tile else None, cuda=plan.device == "cuda",
        trains=stage.trains, vision=vision, sampling_rows=() if sampling is None else _sampling_rows(
            sampling, recipe, shape, 2 if plan.precision in ("bf16", "fp16") else weight_bytes, weight_bytes),
    )


def estimate_memory(recipe: Recipe, plan: DevicePlan, config: Any = None) -> MemoryPlan:
    """The memory plan of a recipe from the model's config alone; ``config`` is the built TRL config when known."""
    x = inputs_for(recipe, plan, config)
    rows = _compute(x)
    total = sum(b for _, b, _ in rows)
    device_bytes, label = device_memory(plan)
    result = MemoryPlan(rows, total, device_bytes, label, reserve=CUDA_CONTEXT if plan.device == "cuda" else 0)
    if result.over:
        result.suggestions = _suggestions(x, device_bytes - result.reserve)
    return result
