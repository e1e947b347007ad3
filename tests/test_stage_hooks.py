"""What a run and its console table ask the stage instead of naming it: the reference log-prob cache hook, and which
held-out figures the stage's evaluation yields."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from rich.console import Console

from dpo_cli.evidence.tables import print_run_summary
from dpo_cli.train.manifest import RunResult
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.refcache import RefLogpCache
from dpo_cli.train.stages import STAGES, get_stage
from dpo_cli.train.stages.base import TrainingStage

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def test_the_reference_cache_is_the_dpo_stages_hook(tmp_path):
    cache_dir = tmp_path / "ref-logps"

    def cache(*overrides: str):
        recipe = load_recipe(TINY / "dpo.yaml", [f"output_dir={tmp_path / 'out'}", f"ref_model.cache_dir={cache_dir}",
                                                 *overrides])
        return get_stage("dpo").reference_cache(recipe, {"train": {"fingerprint": "abc"}}, "fp32")

    cached = cache("ref_model.precompute=true")
    assert isinstance(cached, RefLogpCache)
    assert cached.directory == cache_dir and cached.hint
    assert cache("ref_model.precompute=true", "ref_model.cache=false") is None
    assert cache("ref_model.precompute=false") is None


def test_only_a_stage_with_a_reference_model_has_a_reference_cache():
    """run.py once called dpo's ref_logp_cache for every stage that uses_ref_model; the hook keeps that set."""
    default = next(f.default for f in dataclasses.fields(TrainingStage) if f.name == "reference_cache")
    training = {name: stage for name, stage in STAGES.items() if isinstance(stage, TrainingStage)}
    hooked = {name for name, stage in training.items() if stage.reference_cache is not default}
    assert hooked == {name for name, stage in training.items() if stage.uses_ref_model} == {"dpo"}


def _summary(tmp_path, stage: str | None) -> str:
    figures = {"reward_accuracy": 0.5, "reward_margin": 0.1, "reward_chosen": 0.2, "reward_rejected": 0.1,
               "logps_chosen": -9.0, "margin_std": 0.3, "pairs": 4}
    manifest = {"evaluation": {"before": figures, "after": figures}, **({"stage": stage} if stage else {})}
    printed = io.StringIO()
    print_run_summary(Console(file=printed, width=200), RunResult(tmp_path, manifest))
    return printed.getvalue()


def test_the_run_summary_shows_the_figures_of_the_stages_evaluation(tmp_path):
    assert get_stage("reward").evaluation == "reward"
    reward = _summary(tmp_path, "reward")
    assert "pairwise accuracy (reward of chosen above rejected)" in reward and "mean reward, chosen" in reward
    assert "mean log-prob, chosen" not in reward
    for stage in ("dpo", None):  # a manifest without a stage reads as before: the preference figures
        preference = _summary(tmp_path, stage)
        assert "preference accuracy (implicit reward)" in preference and "mean log-prob, chosen" in preference
        assert "pairwise accuracy" not in preference
