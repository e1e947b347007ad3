"""Preference metrics on held-out pairs: implicit-reward accuracy, margins, KL to the reference and length bias."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Quantiles reported for the margin distribution; a histogram of HISTOGRAM_BINS bins goes with them.
QUANTILES = {"min": 0.0, "p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}
HISTOGRAM_BINS = 20


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


def _encode(tokenizer, rows, sides: tuple[str, ...], max_length: int | None) -> list[tuple[list[int], int]]:
    """(ids, response start) for each row and side, in row order (chosen, rejected, chosen, ...)."""
    sequences = []
    for row in rows:
        for side in sides:
            ids, start = _token_ids(tokenizer, row["prompt"], row[side])
            sequences.append((ids[:max_length] if max_length else ids, start))
    return sequences


def _batches(sequences, batch_size: int, pad: int, device):
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


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


class _EvalMode:
    """Put models in eval mode without gradients, and restore their training flags afterwards."""

    def __init__(self, *models):
        self.models = [m for m in models if m is not None]

    def __enter__(self):
        import torch

        self.flags = [m.training for m in self.models]
        for m in self.models:
            m.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        for m, flag in zip(self.models, self.flags):
            m.train(flag)


def _device(model):
    return next(model.parameters()).device


def score_pairs(model, tokenizer, rows, *, max_length: int | None = None, batch_size: int = 16) -> PairScores:
    """Score every pair's chosen and rejected response under ``model`` (no gradients, eval mode kept as found)."""
    import torch

    sequences = _encode(tokenizer, rows, ("chosen", "rejected"), max_length)
    sums, counts = [], []
    with _EvalMode(model):
        for input_ids, attention, response in _batches(sequences, batch_size, _pad_id(tokenizer), _device(model)):
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            mask = response[:, 1:]
            sums.append((logps * mask).sum(-1).cpu())
            counts.append(mask.sum(-1).cpu())
    sums, counts = torch.cat(sums), torch.cat(counts)
    return PairScores(sums[0::2], sums[1::2], counts[0::2], counts[1::2])


def kl_on_chosen(policy, reference, tokenizer, rows, *, max_length: int | None = None,
                 batch_size: int = 4) -> dict[str, float]:
    """KL(policy || reference) of the next-token distributions at every token of the chosen responses.

    The exact KL over the vocabulary at each teacher-forced position (not a one-sample estimate), averaged per token
    and summed per response. It is an estimate of the policy's drift on the data's chosen responses, not on its own
    samples; 0 when policy and reference are the same weights.
    """
    import torch

    sequences = _encode(tokenizer, rows, ("chosen",), max_length)
    total, tokens, per_sequence = 0.0, 0, []
    ref_device = _device(reference)
    with _EvalMode(policy, reference):
        for input_ids, attention, response in _batches(sequences, batch_size, _pad_id(tokenizer), _device(policy)):
            mask = response[:, 1:]
            # only the response positions: [tokens, vocab] rather than [batch, length, vocab]
            policy_logps = torch.log_softmax(
                policy(input_ids=input_ids, attention_mask=attention).logits[:, :-1][mask].float(), dim=-1)
            ref_logits = reference(input_ids=input_ids.to(ref_device), attention_mask=attention.to(ref_device)).logits
            ref_logps = torch.log_softmax(ref_logits[:, :-1][mask.to(ref_device)].float(), dim=-1)
            kl = (policy_logps.exp() * (policy_logps - ref_logps.to(policy_logps.device))).sum(-1).clamp(min=0)
            counts = mask.sum(-1).tolist()
            for piece in torch.split(kl.cpu(), counts):
                per_sequence.append(float(piece.sum()))
            total += float(kl.sum())
            tokens += int(mask.sum())
    return _clean({"kl_chosen_per_token": total / tokens if tokens else 0.0,
                   "kl_chosen_per_sequence": sum(per_sequence) / len(per_sequence) if per_sequence else 0.0})


def score_reward_pairs(model, tokenizer, rows, *, max_length: int | None = None, batch_size: int = 16) -> PairScores:
    """Scalar rewards (in place of log-probs) of chosen and rejected under a sequence-classification reward model."""
    import torch

    if getattr(model.config, "pad_token_id", None) is None:
        # sequence classifiers pool at the last non-pad token and refuse batches without a pad id
        model.config.pad_token_id = _pad_id(tokenizer)
    sequences = _encode(tokenizer, rows, ("chosen", "rejected"), max_length)
    rewards = []
    with _EvalMode(model):
        for input_ids, attention, _ in _batches(sequences, batch_size, model.config.pad_token_id, _device(model)):
            rewards.append(model(input_ids=input_ids, attention_mask=attention).logits[:, 0].float().cpu())
    rewards = torch.cat(rewards)
    tokens = torch.tensor([len(ids) - min(start, len(ids)) for ids, start in sequences])
    return PairScores(rewards[0::2], rewards[1::2], tokens[0::2], tokens[1::2])


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is None."""
    return value if math.isfinite(value) else None


def _clean(value):
    """Non-finite floats (a model whose weights went NaN) become None, so run.json stays valid JSON."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return _finite(value) if isinstance(value, float) else value


def margin_distribution(margin) -> dict[str, Any]:
    """Spread of per-pair margins: standard deviation, quantiles and a histogram (for the report and plots)."""
    import torch

    margin = margin.double()
    margin = margin[margin.isfinite()]
    if margin.numel() == 0:
        return {"margin_std": None, "margin_quantiles": None, "margin_histogram": None}
    lo, hi = float(margin.min()), float(margin.max())
    if hi == lo:  # one value (e.g. policy == reference): a single bin around it
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(margin, bins=HISTOGRAM_BINS, min=lo, max=hi)
    step = (hi - lo) / HISTOGRAM_BINS
    return {
        "margin_std": _finite(float(margin.std())) if margin.numel() > 1 else 0.0,
        "margin_quantiles": {name: float(torch.quantile(margin, q)) for name, q in QUANTILES.items()},
        "margin_histogram": {"edges": [lo + i * step for i in range(HISTOGRAM_BINS + 1)],
                             "counts": [int(c) for c in counts]},
    }


def length_bias(margin, chosen_tokens, rejected_tokens) -> dict[str, float | None]:
    """How much of the margin the length difference (chosen minus rejected tokens) explains, by least squares.

    ``r_squared`` is the share of the margin's variance explained by a straight line in the length difference; near
    1 the model mostly learned "longer (or shorter) wins". ``margin_per_token`` is that line's slope. Undefined (None)
    when margins or length differences do not vary.
    """
    diff = (chosen_tokens - rejected_tokens).double()
    margin = margin.double()
    finite = margin.isfinite()
    diff, margin = diff[finite], margin[finite]
    if margin.numel() == 0:
        return {"chosen_longer_fraction": None, "correlation": None, "r_squared": None, "margin_per_token": None}
    dm, mm = diff - diff.mean(), margin - margin.mean()
    var_d, var_m = float((dm * dm).mean()), float((mm * mm).mean())
    cov = float((dm * mm).mean())
    result: dict[str, float | None] = {"chosen_longer_fraction": float((diff > 0).double().mean()),
                                       "correlation": None, "r_squared": None, "margin_per_token": None}
    if var_d > 0:
        result["margin_per_token"] = cov / var_d
        if var_m > 1e-24:
            corr = max(-1.0, min(1.0, cov / math.sqrt(var_d * var_m)))
            result.update(correlation=corr, r_squared=corr * corr)
    return result


def preference_metrics(policy: PairScores, reference: PairScores | None, beta: float) -> dict[str, Any]:
    """Accuracy and margins of the implicit reward beta*(log pi - log ref), and length-normalised log-prob accuracy.

    With no reference (or the policy as its own reference) the implicit reward is zero for every pair, so its
    accuracy is 0 and only the length-normalised ranking says anything.
    """
    chosen_norm = policy.chosen / policy.chosen_tokens.clamp(min=1)
    rejected_norm = policy.rejected / policy.rejected_tokens.clamp(min=1)
    metrics: dict[str, Any] = {
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
        metrics.update(margin_distribution(margin))
        metrics["length_bias"] = length_bias(margin, policy.chosen_tokens, policy.rejected_tokens)
    return _clean(metrics)


def reward_model_metrics(scores: PairScores) -> dict[str, Any]:
    """Pairwise accuracy of a reward model (reward of chosen above rejected), its margins and their length bias."""
    margin = (scores.chosen - scores.rejected).double()
    return _clean({"pairs": int(margin.numel()), "reward_accuracy": float((margin > 0).double().mean()),
            "reward_margin": float(margin.mean()), "reward_chosen": float(scores.chosen.mean()),
            "reward_rejected": float(scores.rejected.mean()), **margin_distribution(margin),
            "length_bias": length_bias(margin, scores.chosen_tokens, scores.rejected_tokens)})


# --- dpo-cli eval: a run directory or a model, on held-out pairs --------------------------------------------------

@dataclass
class EvalTarget:
    """What ``dpo-cli eval`` scores: a model, its reference and beta, on which data."""

    model: str
    reference: str | None
    beta: float
    data: list[str] | None  # None: the run's own held-out split
    max_length: int | None
    recipe: Any = None  # the run's Recipe when given a run directory


def _default(field_name: str):
    import dataclasses

    from trl import DPOConfig

    return next(f.default for f in dataclasses.fields(DPOConfig) if f.name == field_name)


def _has_weights(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def resolve_target(model_or_run: str, *, data: str | None = None, ref: str | None = None, beta: float | None = None,
                   max_length: int | None = None) -> EvalTarget:
    """A run directory brings its reference model, beta, max_length and held-out data; options given win."""
    from .errors import InputError

    path = Path(model_or_run)
    if (path / "run.json").is_file() and (path / "recipe.resolved.yaml").is_file():
        from .recipe import load_recipe

        if not _has_weights(path):
            status = json.loads((path / "run.json").read_text(encoding="utf-8")).get("status")
            raise InputError(f"run directory {path} holds no saved model (run status: {status})")
        recipe = load_recipe(path / "recipe.resolved.yaml")
        # the run's reference: an explicit ref_model, else its starting model (also what a LoRA run's adapter sits on)
        return EvalTarget(
            model=str(path), reference=ref or recipe.ref_model.name_or_path or recipe.model.name_or_path,
            beta=beta if beta is not None else recipe.trainer.get("beta", _default("beta")),
            data=[data] if data else None,
            max_length=max_length or recipe.trainer.get("max_length", _default("max_length")),
            recipe=recipe)
    if not data:
        raise InputError(f"{model_or_run} is not a run directory (no run.json): pass the pairs to score with --data FILE")
    return EvalTarget(model=model_or_run, reference=ref, beta=beta if beta is not None else _default("beta"),
                      data=[data], max_length=max_length or _default("max_length"))


def _eval_rows(target: EvalTarget):
    from .data import load_training_data
    from .errors import InputError

    if target.data:
        rows, _ = load_training_data(target.data, "preference")
        return rows, target.data
    from .run import load_data
    from .stages import get_stage

    # the run's own split: the same files, or the same eval_split drawn again with the run's seed
    _, rows, info = load_data(target.recipe, get_stage(target.recipe.stage).DATA_KIND)
    if rows is None:
        raise InputError(f"run {target.model} has no held-out data (no data.eval nor data.eval_split in its recipe): "
                         f"pass --data FILE")
    return rows, info["eval"].get("files") or [f"{info['eval']['split_of_train']:.0%} split of the training data"]


def is_reward_model(path: str) -> bool:
    from transformers import AutoConfig

    from .models import resolve_model_path

    if (Path(path) / "adapter_config.json").is_file():
        return False
    config = AutoConfig.from_pretrained(resolve_model_path(path))
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_for_eval(path: str):
    """A causal LM from a model directory, a hub name or a built-in; a LoRA adapter directory onto its base."""
    from .models import load_causal_lm
    from .recipe import ModelSection

    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path)
    return load_causal_lm(ModelSection(name_or_path=path))


def _to_device(model):
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model


def run_eval(target: EvalTarget, *, batch_size: int = 16) -> dict[str, Any]:
    """Score the target on its pairs; a reward model gets pairwise accuracy, a policy the preference metrics."""
    from .models import load_tokenizer
    from .recipe import ModelSection
    from .run import _quiet_libraries

    _quiet_libraries()
    rows, files = _eval_rows(target)
    tokenizer = load_tokenizer(ModelSection(name_or_path=target.model))
    result: dict[str, Any] = {"model": target.model, "data": {"files": files, "pairs": len(rows)},
                              "max_length": target.max_length}
    if is_reward_model(target.model):
        from transformers import AutoModelForSequenceClassification

        from .models import resolve_model_path

        model = _to_device(AutoModelForSequenceClassification.from_pretrained(resolve_model_path(target.model)))
        scores = score_reward_pairs(model, tokenizer, rows, max_length=target.max_length, batch_size=batch_size)
        result.update(kind="reward_model", metrics=reward_model_metrics(scores))
        return result
    policy = _to_device(load_for_eval(target.model))
    policy_scores = score_pairs(policy, tokenizer, rows, max_length=target.max_length, batch_size=batch_size)
    result.update(kind="policy", reference=target.reference, beta=target.beta)
    if target.reference is None:
        result["metrics"] = preference_metrics(policy_scores, None, target.beta)
        return result
    reference = _to_device(load_for_eval(target.reference))
    ref_scores = score_pairs(reference, tokenizer, rows, max_length=target.max_length, batch_size=batch_size)
    metrics = preference_metrics(policy_scores, ref_scores, target.beta)
    metrics.update(kl_on_chosen(policy, reference, tokenizer, rows, max_length=target.max_length,
                                batch_size=max(1, batch_size // 4)))
    result["metrics"] = metrics
    return result
