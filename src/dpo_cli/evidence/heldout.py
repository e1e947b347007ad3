"""Held-out figures of a training run, before and after, against the reference the trainer itself uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpo_cli.core import console
from dpo_cli.evidence.metrics import clean, preference_metrics, reward_model_metrics
from dpo_cli.train.scoring import PairScores, Truncation, kl_on_chosen, score_pairs, score_reward_pairs
from dpo_cli.train.trl_compat import DPO_REF_COLUMNS


@dataclass
class HeldOut:
    """Scores the held-out pairs with the trainer's model before and after training.

    ``evaluation`` is the stage's: ``preference`` (implicit-reward accuracy, margins, KL; the reference is the
    starting weights, a separate model, or TRL's precomputed log-probs) or ``reward`` (a reward model's pairwise
    accuracy). ``reference`` is the stage's ReferencePlan kind; with none, only the reference-free figures (log-prob
    accuracy and log-probs) are reported. ``from_start``: a precomputed reference is the policy's starting weights
    (no ref_model of its own), which the policy still is before training: it is scored as the policy is, so the
    "before" figures are exactly those of a policy equal to its reference (accuracy 0, margin 0, KL 0) rather than
    the rounding between dpo-cli's scoring and TRL's precompute pass. ``tokenizer`` is the trainer's processing
    class: held-out pairs with images are scored with the processor, their images through the model's forward.
    """

    evaluation: str
    reference: str
    rows: Any
    tokenizer: Any
    truncation: Truncation
    beta: float | None
    batch_size: int
    from_start: bool = False
    before: PairScores | None = None
    reference_scores: PairScores | None = None

    def _score(self, model, **kwargs) -> PairScores:
        scorer = score_pairs if self.evaluation == "preference" else score_reward_pairs
        return scorer(model, self.tokenizer, self.rows, truncation=self.truncation, batch_size=self.batch_size,
                      **kwargs)

    def score_before(self, trainer) -> None:
        self.before = self._score(trainer.model)
        if self.evaluation != "preference" or self.reference == "none":
            return  # reference-free stages (orpo, simpo, cpo): log-prob figures only, no implicit reward
        if self.reference == "precomputed" and not self.from_start:
            import torch

            chosen, rejected = (torch.tensor(trainer.eval_dataset[c], dtype=torch.float32) for c in DPO_REF_COLUMNS)
            if len(chosen) != len(self.before.chosen):
                console.warn(f"TRL precomputed reference log-probs for {len(chosen)} held-out pairs, dpo-cli scored "
                             f"{len(self.before.chosen)}: the implicit-reward figures are left out of run.json")
                return
            self.reference_scores = PairScores(chosen, rejected, self.before.chosen_tokens,
                                               self.before.rejected_tokens, self.before.dropped)
        elif self.reference == "separate":
            self.reference_scores = self._score(trainer.ref_model)
        else:  # copy, shared, or precomputed from the starting weights, which the policy still is
            self.reference_scores = self.before

    def figures(self, trainer) -> dict[str, Any]:
        after = self._score(trainer.model)
        if self.evaluation == "reward":
            return {"before": reward_model_metrics(self.before), "after": reward_model_metrics(after)}
        figures = {"before": preference_metrics(self.before, self.reference_scores, self.beta),
                   "after": preference_metrics(after, self.reference_scores, self.beta)}
        if self.reference_scores is self.before:  # before training the policy is the reference: KL 0
            figures["before"].update(kl_chosen_per_token=0.0, kl_chosen_per_sequence=0.0)
        reference, shared = getattr(trainer, "ref_model", None), False
        if reference is None and (self.reference == "shared" or (self.reference == "precomputed" and self.from_start
                                                                  and _has_adapters(trainer.model))):
            reference, shared = trainer.model, True  # the policy with its LoRA adapter disabled
        if reference is not None:
            figures["after"].update(clean(kl_on_chosen(
                trainer.model, reference, self.tokenizer, self.rows, truncation=self.truncation,
                batch_size=max(1, self.batch_size // 4), reference_adapters_disabled=shared)))
        elif self.reference == "precomputed":
            # the KL needs the reference's whole next-token distributions, and precomputing kept only two log-probs
            # per pair: the row stays, marked not measured, rather than vanishing
            figures["after"].update(kl_chosen_per_token=None, kl_chosen_per_sequence=None)
            figures["before"].setdefault("kl_chosen_per_token", None)
            how = "dpo-cli eval on the output directory (its reference is the starting model)" if self.from_start \
                else "dpo-cli eval on the output directory with --ref set to the reference model"
            console.note(f"KL to the reference not measured after training: the reference was precomputed, so its "
                         f"weights are not in memory; {how} measures it")
        return figures


def _has_adapters(model) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)
