"""Held-out figures agree with TRL's own eval metrics on the same batch, for every reference strategy."""

from __future__ import annotations

import pytest

from dpo_cli.data.load import load_splits
from dpo_cli.evidence.heldout import HeldOut
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.scoring import Truncation
from dpo_cli.train.stages import get_stage
from helpers import build_run, build_trainer, demo_head, tiny_dpo_recipe

pytestmark = pytest.mark.slow

def _other(folder) -> str:
    """A reference that is not the policy's starting point: the tiny model with its final norm scaled."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_cli.core.builtins import ensure_tiny_chat

    model = AutoModelForCausalLM.from_pretrained(ensure_tiny_chat())
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(folder / "other")
    AutoTokenizer.from_pretrained(ensure_tiny_chat()).save_pretrained(folder / "other")
    return str(folder / "other")


def _recipe(folder, eval_rows: int, extra: str) -> str:
    return tiny_dpo_recipe(demo_head("train", 24, folder), demo_head("eval", eval_rows, folder), folder / "run",
                           extra=extra, logging_steps=None, report_to="none")


@pytest.mark.parametrize("extra, kind", [
    ("", "copy"),
    ("lora: {r: 8, alpha: 16, dropout: 0.0}\n", "shared"),
    ("ref_model: {precompute: true, cache: false}\n", "precomputed"),
    ("ref_model: {name_or_path: OTHER}\n", "separate"),
])
def test_held_out_accuracy_and_margin_match_trl_eval(tiny_model, write_recipe, tmp_path, extra, kind):
    recipe = load_recipe(write_recipe(_recipe(tmp_path, 8, extra.replace("OTHER", _other(tmp_path)))))
    assert get_stage("dpo").reference(recipe).kind == kind
    trainer = build_trainer(recipe, eval_data=True)
    _, rows, _ = load_splits(recipe.data, recipe.seed, "preference")
    args = trainer.args
    held = HeldOut("preference", kind, rows, trainer.processing_class, Truncation(args.max_length), args.beta,
                   args.per_device_eval_batch_size, from_start=kind != "separate")
    held.score_before(trainer)
    trainer.train()
    ours = held.figures(trainer)["after"]
    trainer.evaluate()  # one batch of all 8 pairs: TRL's batch means are the means over the pairs
    theirs = trainer.state.log_history[-1]  # what TRL logged for it (TRL 1.0 returns only the loss)

    assert ours["pairs"] == 8
    assert 0.0 < ours["reward_accuracy"] == theirs["eval_rewards/accuracies"]
    assert ours["reward_margin"] == pytest.approx(theirs["eval_rewards/margins"], rel=1e-3, abs=1e-5)
    assert ours["reward_chosen"] == pytest.approx(theirs["eval_rewards/chosen"], rel=1e-3, abs=1e-5)
    assert ours["logps_chosen"] == pytest.approx(theirs["eval_logps/chosen"], rel=1e-4)
    assert ours["logps_rejected"] == pytest.approx(theirs["eval_logps/rejected"], rel=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_a_precomputed_or_cached_reference_reads_like_a_live_one(tiny_model, write_recipe, tmp_path, lora):
    """Before training the policy is its reference: accuracy and margin 0 and KL 0, as with a live reference (not
    the rounding between dpo-cli's scoring and TRL's pass: accuracy 0.237 once); after training the KL row is
    measured where the reference is still in memory (LoRA: the adapter disabled) and marked not measured otherwise."""
    from dpo_cli.evidence.tables import evaluation_table

    extra = f"ref_model: {{precompute: true, cache_dir: {tmp_path / 'cache'}}}\n"
    extra += "lora: {r: 8, alpha: 16, dropout: 0.0}\n" if lora else ""
    recipe = load_recipe(write_recipe(_recipe(tmp_path, 16, extra)))
    _, rows, _ = load_splits(recipe.data, recipe.seed, "preference")
    for attempt in ("computed", "cached"):
        trainer, cache = build_run(recipe, eval_data=True)
        assert [event for event, _, _ in cache.events] == (["miss", "miss"] if attempt == "computed" else ["hit"] * 2)
        args = trainer.args
        held = HeldOut("preference", "precomputed", rows, trainer.processing_class, Truncation(args.max_length),
                       args.beta, args.per_device_eval_batch_size, from_start=True)
        held.score_before(trainer)
        trainer.train()
        figures = held.figures(trainer)
        before, after = figures["before"], figures["after"]
        assert before["reward_accuracy"] == 0.0 and before["reward_margin"] == 0.0
        assert before["kl_chosen_per_token"] == 0.0
        assert after["reward_accuracy"] > 0.0
        if lora:
            assert after["kl_chosen_per_token"] > 0.0
        else:
            assert "kl_chosen_per_token" in after and after["kl_chosen_per_token"] is None
        assert "KL to reference on chosen, per token" in evaluation_table(before, after).columns[0]._cells
