"""Training watchdog and early stopping: trainer callbacks that stop on a non-finite loss or a stalled eval metric."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dpo_cli.core import console
from dpo_cli.core.errors import DpoCliError

LN2 = math.log(2.0)


class TrainingStopped(DpoCliError):
    """Training was stopped because it went wrong (exit code 1); the message says where and what to look at."""


def _nonfinite(model) -> float | None:
    """NaN or inf when a trainable weight is not finite, else None (one reduction and one sync per call)."""
    import torch

    parts = []
    for p in model.parameters():
        if p.requires_grad and p.numel():
            local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 shard
            parts.append(local.detach().sum().float())  # NaN and inf survive a sum; no fp32 copy
    if not parts:
        return None
    total = float(torch.stack(parts).sum())
    return None if math.isfinite(total) else total


class Watchdog(TrainerCallback):
    """Stop at the first non-finite training loss (saving a checkpoint), and warn about two common failures.

    * loss stuck at ln 2 with zero log-probs: every completion token was cut by truncation, so there is nothing to
      learn from; the fix is a larger ``max_length`` (or shorter prompts).
    * the implicit reward of the chosen responses falling steadily below zero: the policy lowers the likelihood of
      the answers it should prefer (a known DPO failure); the fix is an SFT term in the loss.

    The trainer logs the loss only every ``logging_steps`` and replaces a NaN by the running mean
    (``logging_nan_inf_filter``), and transformers has no public hook on each micro-batch's loss; a NaN or infinite
    loss (or gradient) turns the trainable weights non-finite in that step's update, so the watchdog checks them at
    every step's end. (fp16 loss scaling skips such updates instead: there the watchdog sees nothing.)
    """

    def __init__(self, *, window: int = 5, warn: Callable[[str], None] = console.warn):
        self.window = window
        self.warn = warn
        self.warnings: list[str] = []
        self.stopped_at: int | None = None
        self.bad_value: float | None = None  # the non-finite sum of the weights
        self.checkpoint: Path | None = None
        self._chosen_rewards: list[float] = []
        self._said: set[str] = set()

    def _any_rank_bad(self, args) -> bool:
        bad = self.bad_value is not None
        if getattr(args, "world_size", 1) > 1:
            # ranks must agree to stop together, or the ones still training wait forever at the next all-reduce
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([1.0 if bad else 0.0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                bad = bool(flag.item())
        return bad

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.stopped_at is None and model is not None:
            self.bad_value = _nonfinite(model)
        if self.stopped_at is None and self._any_rank_bad(args):
            self.stopped_at = state.global_step
            self.checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            control.should_training_stop = True
            control.should_save = True  # Trainer saves checkpoint-<step> right after this callback
        return control

    def message(self) -> str:
        what = "NaN" if self.bad_value is None or math.isnan(self.bad_value) else "infinite"
        return (f"training loss became {what} at step {self.stopped_at} (its update left {what} weights); training "
                f"stopped there. Weights, optimizer "
                f"and batch state at that step are saved in {self.checkpoint} for inspection. Usual causes: a learning "
                f"rate too high (lower trainer.learning_rate or raise trainer.warmup_steps), fp16 overflow (use bf16 "
                f"or fp32), or an empty or broken pair in the data")

    def _say(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.warnings.append(message)
            self.warn(message)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero or any(k.startswith("eval_") for k in logs):
            return
        loss, chosen, rejected = logs.get("loss"), logs.get("logps/chosen"), logs.get("logps/rejected")
        if (isinstance(loss, (int, float)) and abs(loss - LN2) < 1e-3 and chosen == 0 and rejected == 0):
            self._say("ln2", f"step {state.global_step}: loss is stuck at ln 2 = 0.6931 with zero log-probs: no "
                             f"completion tokens survive truncation. Raise trainer.max_length "
                             f"(now {getattr(args, 'max_length', None)}) or shorten the prompts")
        reward = logs.get("rewards/chosen")
        if isinstance(reward, (int, float)) and math.isfinite(reward):
            self._chosen_rewards.append(float(reward))
            if self._falling():
                self._say("falling", f"step {state.global_step}: the log-probs of the chosen responses have been "
                                     f"falling steadily below the reference (rewards/chosen "
                                     f"{self._chosen_rewards[-1]:+.4f}): the policy is unlearning the answers it "
                                     f"should prefer. Add an SFT term: trainer.loss_type: [sigmoid, sft] "
                                     f"(weights in trainer.loss_weights), or lower trainer.learning_rate")

    def _falling(self) -> bool:
        """Means of the last three windows of logged rewards/chosen each lower than the one before, and below zero."""
        w, r = self.window, self._chosen_rewards
        if len(r) < 3 * w:
            return False
        a, b, c = (sum(r[-k * w:len(r) - (k - 1) * w]) / w for k in (3, 2, 1))
        return a > b > c and c < 0


class EarlyStopping(TrainerCallback):
    """Stop when an eval metric has not improved by ``min_delta`` for ``patience`` evaluations in a row.

    Unlike transformers' EarlyStoppingCallback it needs no ``load_best_model_at_end`` nor checkpoints; it records
    where it stopped and the best value seen.
    """

    def __init__(self, metric: str, *, patience: int = 3, min_delta: float = 0.0, mode: str | None = None):
        self.key = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.patience, self.min_delta = patience, min_delta
        self.mode = mode or ("min" if self.key.endswith("loss") else "max")
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_at: int | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        if self.key not in metrics:
            from dpo_cli.core.errors import InputError, did_you_mean

            names = [k[len("eval_"):] for k in metrics if k.startswith("eval_")]
            raise InputError(f"early_stopping.metric '{self.key[len('eval_'):]}' is not among the eval metrics"
                             f"{did_you_mean(self.key[len('eval_'):], names)}")
        value = float(metrics[self.key])
        if math.isfinite(value) and self._improved(value):
            self.best, self.best_step, self.bad_evals = value, state.global_step, 0
        else:
            self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            if state.is_world_process_zero:
                best = "no finite value yet" if self.best is None else f"{self.best:.6g} (step {self.best_step})"
                console.note(f"early stopping at step {state.global_step}: {self.key} has not improved on {best} "
                             f"for {self.patience} evaluations")
        return control

    def summary(self) -> dict[str, Any]:
        return {"metric": self.key, "mode": self.mode, "patience": self.patience, "min_delta": self.min_delta,
                "stopped_at": self.stopped_at, "best": self.best, "best_step": self.best_step}
