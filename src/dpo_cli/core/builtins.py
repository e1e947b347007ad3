"""The built-in tiny chat model: a byte-level BPE tokenizer and a 2-layer Llama, built offline on first use."""

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

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


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
    path = asset_path(what)
    if not path.exists():
        from dpo_cli.core.errors import InputError

        raise InputError(f"no built-in '{what}'; built-ins are: tiny-chat, demo/train.jsonl, demo/eval.jsonl")
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


def build_tiny_chat(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a tokenizer and a randomly initialised Llama-architecture model (safetensors) to ``out_dir``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # not model.save_pretrained: under torchrun it writes on rank 0 only, and every rank may be the one building
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
    return out_dir


def ensure_tiny_chat() -> Path:
    """The cached tiny chat model, built atomically (temporary directory, then rename) when absent."""
    target = cache_home() / "models" / TINY_CHAT
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_CHAT}-", dir=target.parent))
    try:
        build_tiny_chat(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its build
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
