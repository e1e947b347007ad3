"""Running a pipeline: each stage in order, a stage whose output already holds its completed run skipped."""

from __future__ import annotations

from dpo_cli.core import console
from dpo_cli.core.rundir import RunDir
from dpo_cli.recipe.pipeline import Pipeline
from dpo_cli.recipe.schema import Recipe
from dpo_cli.train.run import RunResult, train


def is_complete(recipe: Recipe) -> bool:
    """A stage output holds a completed run of exactly this recipe."""
    run = RunDir(recipe.output_dir)
    manifest = run.manifest_or_none()
    return bool(manifest) and manifest.get("status") == "completed" and run.recipe_text() == recipe.resolved_yaml()


def run_pipeline(pipeline: Pipeline, *, overwrite: bool = False, resume: str | None = None,
                 resume_force: bool = False, on_result=None) -> list[RunResult]:
    """Run each stage in order; a stage whose output is complete (same recipe, upstream unchanged) is skipped."""
    results, ran = [], set()
    for stage in pipeline.stages:
        upstream_ran = [name for name in stage.needs if name in ran]
        if not upstream_ran and is_complete(stage.recipe):
            console.note(f"stage {stage.name} ({stage.recipe.stage}): complete in {stage.recipe.output_dir}, skipped")
            continue
        again = upstream_ran and RunDir(stage.recipe.output_dir).manifest_file.exists()
        reason = f" (its input {', '.join(upstream_ran)} was trained again)" if again else ""
        console.note(f"stage {stage.name} ({stage.recipe.stage}): training into {stage.recipe.output_dir}{reason}")
        result = train(stage.recipe, overwrite=overwrite, resume=resume, resume_force=resume_force)
        resume = None  # only the first stage that runs picks up its checkpoint
        ran.add(stage.name)
        results.append(result)
        if on_result is not None:
            on_result(stage, result)
    return results
