"""Running a pipeline: each stage in order, a stage whose output already holds its completed run skipped, then a
summary of every stage's figures and of each round (pairs made, then trained on)."""

from __future__ import annotations

import os
import signal
from collections.abc import Collection
from typing import Any

from dpo_cli.core import console
from dpo_cli.core.errors import InputError, Interrupted
from dpo_cli.core.rundir import RunDir
from dpo_cli.recipe.schema import Recipe
from dpo_cli.runner.run import train
from dpo_cli.train.manifest import RunResult
from dpo_cli.train.recipe_pipeline import Pipeline
from dpo_cli.train.stages import get_stage
from dpo_cli.train.stages.base import DataStage, Stage, TrainingStage


def run_stage(recipe: Recipe, *, overwrite: bool = False, resume: str | None = None,
              resume_force: bool = False) -> RunResult:
    """One stage recipe: a stage that makes data runs its own flow, every other one trains."""
    stage = get_stage(recipe.stage)
    if isinstance(stage, DataStage):
        if resume:
            raise InputError(f"stage {stage.name} makes data and keeps no checkpoints; run it again without --resume")
        from dpo_cli.train.models import is_vision_language
        from dpo_cli.train.vision import check_images

        check_images(recipe, stage, is_vision_language(recipe.model), data_images=False)
        return stage.make_data(recipe, overwrite=overwrite)
    if recipe.eval is not None:
        from dpo_cli.evidence.judge import check_before_training

        check_before_training(recipe.eval)  # a judge that cannot judge is said before training, not after it
    result = train(recipe, overwrite=overwrite, resume=resume, resume_force=resume_force)
    if recipe.eval is not None and result.is_main:
        from dpo_cli.evidence.judge import judge_after_training

        judge_after_training(recipe, result.manifest)
    return result


def is_complete(recipe: Recipe) -> bool:
    """A stage output holds a completed run of exactly this recipe."""
    run = RunDir(recipe.output_dir)
    manifest = run.manifest_or_none()
    return bool(manifest) and manifest.get("status") == "completed" and run.recipe_text() == recipe.resolved_yaml()


def run_pipeline(pipeline: Pipeline, *, overwrite: bool = False, resume: str | None = None,
                 resume_force: bool = False, on_result=None) -> list[RunResult]:
    """Run each stage in order; a stage whose output is complete (same recipe, upstream unchanged) is skipped. A
    signal between stages (a stage says itself what a signal during it kept) is said with where the pipeline was."""
    results, ran, done = [], set(), []
    running = None  # the stage whose run is under way
    try:
        for stage in pipeline.stages:
            upstream_ran = [name for name in stage.needs if name in ran]
            if not upstream_ran and is_complete(stage.recipe):
                console.note(f"stage {stage.name} ({stage.recipe.stage}): complete in {stage.recipe.output_dir}, "
                             "skipped")
                done.append(stage.name)
                continue
            again = upstream_ran and RunDir(stage.recipe.output_dir).manifest_file.exists()
            reason = f" (its input {', '.join(upstream_ran)} was made again)" if again else ""
            trains = get_stage(stage.recipe.stage).trains
            doing = "training" if trains else "making data"
            console.note(f"stage {stage.name} ({stage.recipe.stage}): {doing} into {stage.recipe.output_dir}{reason}")
            running = stage.name
            result = run_stage(stage.recipe, overwrite=overwrite, resume=resume if trains else None,
                               resume_force=resume_force)
            running = None
            if trains:
                resume = None  # only the first stage that trains picks up its checkpoint
            ran.add(stage.name)
            done.append(stage.name)
            results.append(result)
            if on_result is not None:
                on_result(stage, result)
    except (KeyboardInterrupt, Interrupted) as exc:
        if running is not None and isinstance(exc, Interrupted):
            raise
        raise _stopped(getattr(exc, "signum", signal.SIGINT), running, done) from None
    if os.environ.get("RANK", "0") == "0":  # under a launcher, the main process writes
        RunDir(pipeline.output_dir).write_json(RunDir.PIPELINE, pipeline_summary(pipeline, ran))
    return results


def _stopped(signum: int, running: str | None, done: list[str]) -> Interrupted:
    """A signal outside a stage's own handling: Ctrl-C between stages is a KeyboardInterrupt, SIGTERM the CLI's."""
    where = (f"during stage {running}" if running else
             f"between stages, with {', '.join(done)} complete" if done else "before the first stage")
    return Interrupted(f"stopped by {signal.Signals(signum).name} {where}; run the same command again to go on from "
                       f"the first stage that is not complete", signum)


def _headline(manifest: dict) -> dict[str, Any]:
    """A stage's figures worth a column: held-out accuracies after training, or what a pairs stage made."""
    after = (manifest.get("evaluation") or {}).get("after") or {}
    made = manifest.get("pairs") or {}
    figures = {"steps": manifest.get("global_step"), "accuracy": after.get("reward_accuracy"),
               "logprob_accuracy": after.get("logprob_accuracy"), "pairs": made.get("pairs"), "ties": made.get("ties"),
               "mean_reward": made.get("mean_reward"), "heldout_mean_reward": (made.get("heldout") or {}).get(
                   "mean_reward")}
    judged = [j for j in [(manifest.get("evaluation") or {}).get("judge"),
                          *(manifest.get("evaluation") or {}).get("judge_also", [])] if j]
    if judged:  # eval.judge: the win rate against the starting model (the round before), then any others (the base)
        figures["judged"] = [{"against": j["against"], "win_rate": j["win_rate"],
                              "length_controlled_win_rate": j["length_controlled_win_rate"]} for j in judged]
    return {key: value for key, value in figures.items() if value is not None}


def _judges(stage: Stage) -> bool:
    """A stage that trains a reward model: the judge of the pairs a later stage makes."""
    return isinstance(stage, TrainingStage) and stage.evaluation == "reward"


def pipeline_summary(pipeline: Pipeline, ran: Collection[str] = ()) -> dict[str, Any]:
    """Every stage's status and headline figures (read from its run.json, so skipped stages count too), and one round
    per data-making stage: the policy it sampled, the mean reward of those samples, the judge's held-out accuracy, and
    the held-out accuracy of the stages that trained on its pairs."""
    outputs = {s.recipe.output_dir: s.name for s in pipeline.stages}
    stages = {}
    for s in pipeline.stages:
        manifest = RunDir(s.recipe.output_dir).manifest_or_none() or {}
        stages[s.name] = {"stage": s.recipe.stage, "output_dir": s.recipe.output_dir, "status": manifest.get("status"),
                          "ran": s.name in ran, **_headline(manifest)}
    rounds = []
    for s in pipeline.stages:
        if get_stage(s.recipe.stage).trains:
            continue
        judges = [n for n in s.needs if _judges(get_stage(stages[n]["stage"]))]
        trained = [t.name for t in pipeline.stages if s.name in t.needs and get_stage(t.recipe.stage).trains]
        figures = stages[s.name]
        rounds.append({
            "round": len(rounds) + 1, "pairs_stage": s.name,
            "policy": outputs.get(s.recipe.model.name_or_path, s.recipe.model.name_or_path),
            **{k: figures[k] for k in ("pairs", "ties", "mean_reward", "heldout_mean_reward") if k in figures},
            **({"judge": judges[0], "judge_accuracy": stages[judges[0]].get("accuracy")} if judges else {}),
            "trained": [{"name": n, **{k: stages[n][k] for k in ("accuracy", "logprob_accuracy") if k in stages[n]},
                         **({"judged": [{**j, "against": outputs.get(j["against"], j["against"])}
                                        for j in stages[n]["judged"]]} if "judged" in stages[n] else {})}
                        for n in trained],
        })
    return {"output_dir": str(pipeline.output_dir), "stages": stages, "rounds": rounds}
