"""Sampling k completions per prompt in batches: transformers' generate, or vLLM when asked for and installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dpo_cli.recipe.schema import SamplingSection


@dataclass
class Sample:
    text: str
    finished: bool  # ended with an end-of-sequence token; False: cut at max_new_tokens


def vllm_missing() -> str | None:
    """Why sampling.engine: vllm cannot run here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "sampling.engine: vllm needs vLLM, which is not installed (pip install vllm, on a GPU machine); " \
               "engine: transformers samples without it"
    return None


def encode_prompt(tokenizer, prompt: Any) -> list[int]:
    """Token ids a completion continues from: chat messages through the chat template with the assistant's turn
    opened, plain text as it is (as TRL's trainers tokenize the prompts they are given)."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def _stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's end of sequence and any the model's generation config adds
    (an end-of-turn token)."""
    declared = model.generation_config.eos_token_id
    declared = declared if isinstance(declared, list) else [] if declared is None else [declared]
    return sorted({*declared, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def sample_transformers(model, tokenizer, prompts: Sequence[Any], *, settings: SamplingSection
                        ) -> Iterator[list[Sample]]:
    """Yield, per batch of prompts, num_samples samples for each prompt in order (prompt 1's k samples, then prompt
    2's, ...). Prompts are left-padded so every completion starts at the same position."""
    import torch

    device = next(model.parameters()).device
    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    for batch in _batches(prompts, settings.batch_size):
        encoded = [encode_prompt(tokenizer, p) for p in batch]
        width = max(map(len, encoded))
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        with torch.no_grad():  # top_k 0: temperature and top_p alone shape the sampling, not a checkpoint's default
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                                 temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                                 max_new_tokens=settings.max_new_tokens, num_return_sequences=settings.num_samples,
                                 pad_token_id=pad, eos_token_id=stop)
        samples = []
        for ids in out[:, width:].tolist():
            ends = [i for i, token in enumerate(ids) if token in stop]
            kept = ids[:ends[0]] if ends else ids
            samples.append(Sample(tokenizer.decode(kept, skip_special_tokens=True).strip(), bool(ends)))
        yield samples


def sample_vllm(model_path: str, tokenizer, prompts: Sequence[Any], *, settings: SamplingSection, seed: int,
                trust_remote_code: bool) -> Iterator[list[Sample]]:
    """The same samples through vLLM, which batches by itself: all prompts go in one call."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=seed, trust_remote_code=trust_remote_code)
    params = SamplingParams(n=settings.num_samples, temperature=settings.temperature, top_p=settings.top_p,
                            max_tokens=settings.max_new_tokens, seed=seed)
    outputs = llm.generate([{"prompt_token_ids": encode_prompt(tokenizer, p)} for p in prompts], params)
    yield [Sample(c.text.strip(), c.finish_reason == "stop") for output in outputs for c in output.outputs]
