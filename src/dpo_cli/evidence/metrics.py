"""Figures from pair scores: implicit-reward accuracy and margins, their spread, length bias, reward-model accuracy."""

from __future__ import annotations

import math
from typing import Any

from dpo_cli.train.scoring import PairScores

# Quantiles reported for the margin distribution; a histogram of HISTOGRAM_BINS bins goes with them.
QUANTILES = {"min": 0.0, "p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}
HISTOGRAM_BINS = 20


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is None."""
    return value if math.isfinite(value) else None


def clean(value):
    """Non-finite floats (a model whose weights went NaN) become None, so run.json stays valid JSON."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
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
        **({"pairs_left_out": policy.dropped} if policy.dropped else {}),
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
    return clean(metrics)


def reward_model_metrics(scores: PairScores) -> dict[str, Any]:
    """Pairwise accuracy of a reward model (reward of chosen above rejected), its margins and their length bias."""
    margin = (scores.chosen - scores.rejected).double()
    return clean({"pairs": int(margin.numel()), **({"pairs_left_out": scores.dropped} if scores.dropped else {}),
                  "reward_accuracy": float((margin > 0).double().mean()),
            "reward_margin": float(margin.mean()), "reward_chosen": float(scores.chosen.mean()),
            "reward_rejected": float(scores.rejected.mean()), **margin_distribution(margin),
            "length_bias": length_bias(margin, scores.chosen_tokens, scores.rejected_tokens)})


# --- dpo-cli eval: a run directory or a model, on held-out pairs --------------------------------------------------
