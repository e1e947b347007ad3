"""Preference metrics on held-out pairs: implicit-reward accuracy, margins and length-normalised log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PairScores:
    """Summed response log-probs of chosen and rejected under one model, and their response lengths in tokens."""

    chosen: Any  # float tensor [pairs]
    rejected: Any
    chosen_tokens: Any  # long tensor [pairs]
    rejected_tokens: Any


def _token_ids(tokenizer, prompt, response) -> tuple[list[int], int]:
    """Token ids of prompt+response and where the response starts, cut at the chat template's turn boundary."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + response + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return list(full_ids), start


def score_pairs(model, tokenizer, rows, *, max_length: int | None = None, batch_size: int = 16) -> PairScores:
    """Score every pair's chosen and rejected response under ``model`` (no gradients, eval mode kept as found)."""
    import torch

    sequences = []
    for row in rows:
        for side in ("chosen", "rejected"):
            ids, start = _token_ids(tokenizer, row["prompt"], row[side])
            if max_length:
                ids = ids[:max_length]
            sequences.append((ids, start))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums, counts = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(sequences), batch_size):
            batch = sequences[i:i + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            response = torch.zeros((len(batch), width), dtype=torch.bool)
            for j, (ids, start) in enumerate(batch):
                input_ids[j, :len(ids)] = torch.tensor(ids)
                attention[j, :len(ids)] = 1
                response[j, start:len(ids)] = True
            input_ids, attention, response = input_ids.to(device), attention.to(device), response.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            mask = response[:, 1:]
            sums.append((logps * mask).sum(-1).cpu())
            counts.append(mask.sum(-1).cpu())
    model.train(was_training)
    sums, counts = torch.cat(sums), torch.cat(counts)
    return PairScores(sums[0::2], sums[1::2], counts[0::2], counts[1::2])


def preference_metrics(policy: PairScores, reference: PairScores | None, beta: float) -> dict[str, float]:
    """Accuracy and margins of the implicit reward beta*(log pi - log ref), and length-normalised log-prob accuracy.

    With no reference (or the policy as its own reference) the implicit reward is zero for every pair, so its
    accuracy is 0 and only the length-normalised ranking says anything.
    """
    chosen_norm = policy.chosen / policy.chosen_tokens.clamp(min=1)
    rejected_norm = policy.rejected / policy.rejected_tokens.clamp(min=1)
    metrics = {
        "pairs": int(policy.chosen.numel()),
        "logprob_accuracy": float((chosen_norm > rejected_norm).float().mean()),
        "logps_chosen": float(policy.chosen.mean()),
        "logps_rejected": float(policy.rejected.mean()),
    }
    if reference is not None:
        reward_chosen = beta * (policy.chosen - reference.chosen)
        reward_rejected = beta * (policy.rejected - reference.rejected)
        margin = reward_chosen - reward_rejected
        metrics.update({
            "reward_accuracy": float((margin > 0).float().mean()),
            "reward_margin": float(margin.mean()),
            "reward_chosen": float(reward_chosen.mean()),
            "reward_rejected": float(reward_rejected.mean()),
        })
    return metrics
