"""Scoring held-out pairs under a model: summed response log-probs, exact KL to a reference, reward-model scores.

Pairs are tokenized as TRL's DPOTrainer tokenizes them (trl_compat.dpo_tokenize), so the figures agree with its
eval_rewards/* on the same batch; truncation to max_length as TRL's collator does it, and pairs whose prompt alone
fills max_length left out where TRL drops them from training too. Pairs with images (a vision-language model's rows)
are batched by TRL's own vision collator (trl_compat.vision_pair_batches) and scored with their images through the
model's forward, as the trainer scores them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dpo_cli.core.errors import InputError
from dpo_cli.data.images import MANY, ONE
from dpo_cli.train.models import text_tokenizer
from dpo_cli.train.trl_compat import dpo_drops_filled_prompts, dpo_tokenize, vision_pair_batches


@dataclass
class PairScores:
    """Summed response log-probs (or rewards) of chosen and rejected under one model, and response lengths."""

    chosen: Any  # float tensor [pairs]
    rejected: Any
    chosen_tokens: Any  # long tensor [pairs]
    rejected_tokens: Any
    dropped: int = 0  # pairs left out: the prompt alone fills max_length


@dataclass(frozen=True)
class Truncation:
    max_length: int | None = None
    mode: str = "keep_start"  # TRL's truncation_mode: keep_start or keep_end


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items two sequences share (token ids of a prompt and of a whole conversation, of two
    responses)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _cut(ids: list[int], start: int, truncation: Truncation) -> tuple[list[int], int]:
    """(ids, response start) after truncation; the response runs to the end of the kept ids."""
    limit = truncation.max_length
    if limit is None or len(ids) <= limit:
        return ids, start
    if truncation.mode == "keep_end":
        cut = len(ids) - limit
        return ids[cut:], max(0, start - cut)
    return ids[:limit], min(start, limit)


def encode_pairs(tokenizer, rows, truncation: Truncation, sides: tuple[str, ...] = ("chosen", "rejected"), *,
                 keep_all: bool = False) -> tuple[list[tuple[list[int], int]], list[int]]:
    """(ids, response start) for each kept row and side, in order (chosen, rejected, chosen, ...), and the kept rows.

    A row whose prompt alone fills max_length is left out where TRL's DPOTrainer leaves it out, unless ``keep_all``.
    """
    drops = not keep_all and truncation.max_length is not None and truncation.mode == "keep_start" \
        and dpo_drops_filled_prompts()
    sequences, kept = [], []
    for index, row in enumerate(rows):
        full, start = dpo_tokenize(tokenizer, row["prompt"], [row[s] for s in sides], tools=row.get("tools"))
        if drops and start >= truncation.max_length:
            continue
        kept.append(index)
        sequences += [_cut(ids, start, truncation) for ids in full]
    return sequences, kept


def batches(sequences, batch_size: int, pad: int, device) -> Iterator[tuple[Any, Any, Any]]:
    """Right-padded (input_ids, attention_mask, response_mask) batches."""
    import torch

    for i in range(0, len(sequences), batch_size):
        batch = sequences[i:i + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        response = torch.zeros((len(batch), width), dtype=torch.bool)
        for j, (ids, start) in enumerate(batch):
            input_ids[j, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[j, :len(ids)] = 1
            response[j, start:len(ids)] = True
        yield input_ids.to(device), attention.to(device), response.to(device)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@contextlib.contextmanager
def eval_mode(*models):
    """Models in eval mode without gradients; their training flags are restored afterwards."""
    import torch

    models = [m for m in models if m is not None]
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)


def model_device(model):
    return next(model.parameters()).device


def _adapters(model, disabled: bool):
    """A context with the model's LoRA adapters switched off (the shared reference of a LoRA run), else nothing."""
    return model.disable_adapter() if disabled else contextlib.nullcontext()


def score_pairs(model, tokenizer, rows, *, truncation: Truncation = Truncation(), batch_size: int = 16,
                adapters_disabled: bool = False) -> PairScores:
    """Score every pair's chosen and rejected response under ``model`` (no gradients, eval mode kept as found).

    ``adapters_disabled`` scores a peft model with its adapters off: the reference of a LoRA run. ``tokenizer`` is
    the model's processing class: a tokenizer, or the processor of a vision-language model, which pairs with images
    need.
    """
    import torch

    if image_rows(rows):
        return _score_image_pairs(model, tokenizer, rows, truncation, batch_size, adapters_disabled)
    tokenizer = text_tokenizer(tokenizer)  # text pairs: the processor's tokenizer
    sequences, kept = encode_pairs(tokenizer, rows, truncation)
    sums, counts = [], []
    with eval_mode(model), _adapters(model, adapters_disabled):
        for input_ids, attention, response in batches(sequences, batch_size, pad_id(tokenizer), model_device(model)):
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            mask = response[:, 1:]
            sums.append((logps * mask).sum(-1).cpu())
            counts.append(mask.sum(-1).cpu())
    sums = torch.cat(sums) if sums else torch.zeros(0)
    counts = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)
    return PairScores(sums[0::2], sums[1::2], counts[0::2], counts[1::2], dropped=len(rows) - len(kept))


def kl_on_chosen(policy, reference, tokenizer, rows, *, truncation: Truncation = Truncation(), batch_size: int = 4,
                 reference_adapters_disabled: bool = False) -> dict[str, float]:
    """KL(policy || reference) of the next-token distributions at every token of the chosen responses.

    The exact KL over the vocabulary at each teacher-forced position (not a one-sample estimate), averaged per token
    and summed per response. It is an estimate of the policy's drift on the data's chosen responses, not on its own
    samples; 0 when policy and reference are the same weights. ``reference_adapters_disabled``: the reference is
    ``reference`` (the policy itself) with its LoRA adapters off. Pairs with images are measured with them, batched as
    TRL batches them (both responses: its collator pairs them, and the rejected rows are masked out here).
    """
    import torch

    if image_rows(rows):
        return _image_kl(policy, reference, tokenizer, rows, truncation, batch_size, reference_adapters_disabled)
    tokenizer = text_tokenizer(tokenizer)  # text pairs: the processor's tokenizer
    sequences, _ = encode_pairs(tokenizer, rows, truncation, sides=("chosen",))
    total, tokens, per_sequence = 0.0, 0, []
    ref_device = model_device(reference)
    with eval_mode(policy, reference):
        for input_ids, attention, response in batches(sequences, batch_size, pad_id(tokenizer),
                                                      model_device(policy)):
            mask = response[:, 1:]
            # only the response positions: [tokens, vocab] rather than [batch, length, vocab]
            policy_logps = torch.log_softmax(
                policy(input_ids=input_ids, attention_mask=attention).logits[:, :-1][mask].float(), dim=-1)
            with _adapters(reference, reference_adapters_disabled):
                ref_logits = reference(input_ids=input_ids.to(ref_device),
                                       attention_mask=attention.to(ref_device)).logits
            ref_logps = torch.log_softmax(ref_logits[:, :-1][mask.to(ref_device)].float(), dim=-1)
            kl = (policy_logps.exp() * (policy_logps - ref_logps.to(policy_logps.device))).sum(-1).clamp(min=0)
            for piece in torch.split(kl.cpu(), mask.sum(-1).tolist()):
                per_sequence.append(float(piece.sum()))
            total += float(kl.sum())
            tokens += int(mask.sum())
    return {"kl_chosen_per_token": total / tokens if tokens else 0.0,
            "kl_chosen_per_sequence": sum(per_sequence) / len(per_sequence) if per_sequence else 0.0}


def score_sequences(model, tokenizer, sequences, *, batch_size: int = 16) -> Any:
    """One scalar reward per sequence under a sequence-classification reward model."""
    import torch

    if getattr(model.config, "pad_token_id", None) is None:
        # sequence classifiers pool at the last non-pad token and refuse batches without a pad id
        model.config.pad_token_id = pad_id(tokenizer)
    rewards = []
    with eval_mode(model):
        for input_ids, attention, _ in batches(sequences, batch_size, model.config.pad_token_id, model_device(model)):
            rewards.append(model(input_ids=input_ids, attention_mask=attention).logits[:, 0].float().cpu())
    return torch.cat(rewards) if rewards else torch.zeros(0)


def score_reward_pairs(model, tokenizer, rows, *, truncation: Truncation = Truncation(),
                       batch_size: int = 16) -> PairScores:
    """Scalar rewards (in place of log-probs) of chosen and rejected under a sequence-classification reward model."""
    import torch

    if image_rows(rows):
        raise InputError("the pairs hold images, and a sequence-classification reward model reads text only; score "
                         "image pairs with a vision-language model")
    tokenizer = text_tokenizer(tokenizer)  # text pairs: the processor's tokenizer
    sequences, kept = encode_pairs(tokenizer, rows, truncation)
    rewards = score_sequences(model, tokenizer, sequences, batch_size=batch_size)
    tokens = torch.tensor([len(ids) - min(start, len(ids)) for ids, start in sequences], dtype=torch.long)
    return PairScores(rewards[0::2], rewards[1::2], tokens[0::2], tokens[1::2], dropped=len(rows) - len(kept))


def image_rows(rows) -> bool:
    """Whether held-out rows carry images (an ``images`` or ``image`` column), as TRL's trainers test their rows."""
    columns = getattr(rows, "column_names", None)
    if columns is None:
        columns = rows[0].keys() if len(rows) else ()
    return MANY in columns or ONE in columns


def _processor(processing_class):
    if getattr(processing_class, "image_processor", None) is None:
        raise InputError("the pairs hold images: scoring them needs the model's processor (a vision-language model "
                         "with its processor_config.json), and this model has a text tokenizer only")
    return processing_class


def _image_forward(model, inputs: dict, completion, device) -> tuple[Any, Any, Any]:
    """(logits, next-token ids, response mask) of one collated image batch, shifted as TRL shifts them: the logits at
    a position score the next token."""
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    input_ids = inputs["input_ids"]
    # the last positions are the sequence's own (a model that prepends anything keeps it before them, as in TRL)
    logits = model(**inputs, use_cache=False).logits[:, -input_ids.size(1):][:, :-1]
    return logits, input_ids[:, 1:], completion.to(device)[:, 1:].bool()


def _pair_rows(batch_size: int) -> int:
    """Rows per collated image batch: each row is two sequences (chosen and rejected), so half the sequences a text
    batch of ``batch_size`` holds, and the same memory."""
    return max(1, batch_size // 2)


def _score_image_pairs(model, processor, rows, truncation: Truncation, batch_size: int,
                       adapters_disabled: bool) -> PairScores:
    import torch

    batches = vision_pair_batches(_processor(processor), rows, max_length=truncation.max_length,
                                  batch_size=_pair_rows(batch_size))
    chosen, rejected, chosen_tokens, rejected_tokens = [], [], [], []
    device = model_device(model)
    with eval_mode(model), _adapters(model, adapters_disabled):
        for inputs, completion in batches:
            logits, ids, mask = _image_forward(model, inputs, completion, device)
            logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)
            sums, counts = (logps * mask).sum(-1).cpu(), mask.sum(-1).cpu()
            half = len(sums) // 2  # the collator puts the batch's chosen sequences first, then its rejected
            chosen.append(sums[:half])
            rejected.append(sums[half:])
            chosen_tokens.append(counts[:half])
            rejected_tokens.append(counts[half:])
    if not chosen:
        empty = torch.zeros(0)
        return PairScores(empty, empty, empty.long(), empty.long())
    # TRL's vision collator truncates image rows rather than dropping any: every pair is kept
    return PairScores(torch.cat(chosen), torch.cat(rejected), torch.cat(chosen_tokens), torch.cat(rejected_tokens))


def _image_kl(policy, reference, processor, rows, truncation: Truncation, batch_size: int,
              reference_adapters_disabled: bool) -> dict[str, float]:
    import torch

    batches = vision_pair_batches(_processor(processor), rows, max_length=truncation.max_length,
                                  batch_size=_pair_rows(batch_size))
    total, tokens, per_sequence = 0.0, 0, []
    device, ref_device = model_device(policy), model_device(reference)
    with eval_mode(policy, reference):
        for inputs, completion in batches:
            logits, _, mask = _image_forward(policy, inputs, completion, device)
            mask[len(mask) // 2:] = False  # the chosen responses only
            # only the response positions: [tokens, vocab] rather than [batch, length, vocab]
            policy_logps = torch.log_softmax(logits[mask].float(), dim=-1)
            with _adapters(reference, reference_adapters_disabled):
                ref_logits, _, _ = _image_forward(reference, inputs, completion, ref_device)
            ref_logps = torch.log_softmax(ref_logits[mask.to(ref_device)].float(), dim=-1).to(device)
            kl = (policy_logps.exp() * (policy_logps - ref_logps)).sum(-1).clamp(min=0)
            counts = mask.sum(-1)[:len(mask) // 2].tolist()
            per_sequence += [float(piece.sum()) for piece in torch.split(kl.cpu(), counts)]
            total += float(kl.sum())
            tokens += int(mask.sum())
    return {"kl_chosen_per_token": total / tokens if tokens else 0.0,
            "kl_chosen_per_sequence": sum(per_sequence) / len(per_sequence) if per_sequence else 0.0}
