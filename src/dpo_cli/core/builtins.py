"""The built-in tiny models, built offline on first use: a chat model (byte-level BPE tokenizer, 2-layer Llama) and a
vision-language model (the same language model under a 2-layer CLIP vision tower, LLaVA-style, with its processor)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
# Bump when the recipe below changes, so caches of older builds are not reused.
TINY_CHAT = "tiny-chat-v1"
TINY_VLM = "tiny-vlm-v1"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
IMAGE_TOKEN = "<image>"
# The chat template of tiny-vlm: a message's content is a string or a list of parts (TRL's vision layout), and an
# image part becomes the image token, which the processor expands to one token per image patch.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_home() -> Path:
    return Path(os.environ.get("DPO_CLI_HOME") or Path.home() / ".cache" / "dpo-cli")


def asset_path(relative: str) -> Path:
    """Path of a file shipped in the package's assets folder, e.g. ``demo/train.jsonl``."""
    return Path(str(resources.files("dpo_cli") / "assets" / relative))


def resolve_builtin(name: str) -> str:
    """Map ``builtin:demo/train.jsonl`` to the shipped file and ``builtin:tiny-chat`` to its built directory."""
    if not name.startswith(BUILTIN_PREFIX):
        return name
    what = name[len(BUILTIN_PREFIX):]
    if what == "tiny-chat":
        return str(ensure_tiny_chat())
    if what == "tiny-vlm":
        return str(ensure_tiny_vlm())
    path = asset_path(what)
    if not path.exists():
        from dpo_cli.core.errors import InputError

        raise InputError(f"no built-in '{what}'; built-ins are: tiny-chat, tiny-vlm, demo/train.jsonl, "
                         f"demo/eval.jsonl, demo/images/train.jsonl, demo/images/eval.jsonl")
    return str(path)


def _corpus() -> list[str]:
    texts = []
    for split in ("train", "eval"):
        with open(asset_path(f"demo/{split}.jsonl"), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts += [m["content"] for key in ("prompt", "chosen", "rejected") for m in row[key]]
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int = 2000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus() + ["role user assistant system"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _language_model_config(tokenizer, hidden_size: int, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


def _save_model(model, tokenizer, out_dir: Path) -> None:
    """Config, generation config and safetensors weights, written by whichever process calls it.

    Not model.save_pretrained: under torchrun it writes on rank 0 only, and every rank may be the one building."""
    from safetensors.torch import save_file

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.architectures = [type(model).__name__]
    model.config.dtype = "float32"
    model.config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():  # the tied LM head is the embedding: stored once, under its name
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weights[name] = tensor.contiguous()
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def build_tiny_chat(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a tokenizer and a randomly initialised Llama-architecture model (safetensors) to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_language_model_config(tokenizer, hidden_size, layers))
    _save_model(model, tokenizer, out_dir)
    return out_dir


def _image_processor(size: int):
    """A CLIP image processor that needs no torchvision: transformers 5 names its PIL one apart, 4.x has only that."""
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:
        from transformers import CLIPImageProcessor as processor_class
    return processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_tiny_vlm(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, image_size: int = 32,
                   patch_size: int = 8, seed: int = 0) -> Path:
    """Write a LLaVA-architecture model (a 2-layer CLIP vision tower, a projector, tiny-chat's language model shape)
    and its processor (CLIP image processing at ``image_size`` pixels, the tiny tokenizer plus an image token, a chat
    template that renders image parts) to ``out_dir``. Each image becomes (image_size / patch_size)^2 tokens: 16."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    # "default" drops the vision tower's CLS position: one token per patch, which num_additional_image_tokens tells
    # the processor so it expands the image token to as many positions as the projector gives
    processor = LlavaProcessor(image_processor=_image_processor(image_size), tokenizer=tokenizer,
                               patch_size=patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                               chat_template=VLM_CHAT_TEMPLATE)
    processor.save_pretrained(str(out_dir))
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=_language_model_config(tokenizer, hidden_size, layers),
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=True)
    torch.manual_seed(seed)
    _save_model(LlavaForConditionalGeneration(config), tokenizer, out_dir)
    return out_dir


def _ensure(name: str, build) -> Path:
    """A cached built-in model, built atomically (temporary directory, then rename) when absent."""
    target = cache_home() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its build
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_chat() -> Path:
    """The cached tiny chat model."""
    return _ensure(TINY_CHAT, build_tiny_chat)


def ensure_tiny_vlm() -> Path:
    """The cached tiny vision-language model."""
    return _ensure(TINY_VLM, build_tiny_vlm)
