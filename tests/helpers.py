"""Test helpers: run the CLI in-process and capture its exit code and output."""

from __future__ import annotations

import sys

import pytest


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Call dpo_cli.cli.main() with ``args``; return (exit code, stdout, stderr)."""
    from dpo_cli.cli import main

    argv = sys.argv
    sys.argv = ["dpo-cli", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def build_trainer(recipe, *, eval_data: bool = False, build=None):
    """The TRL trainer a run would build for ``recipe``, without training (build_run's first part)."""
    return build_run(recipe, eval_data=eval_data, build=build)[0]


def build_run(recipe, *, eval_data: bool = False, build=None):
    """(trainer, reference log-prob cache or None) as runner/run.py builds them for ``recipe``: its data, the defaults
    settled for this run, its config, tokenizer and models, then run.build_trainer. ``eval_data`` hands the trainer
    the held-out split (its reference is then precomputed too); ``build`` replaces the stage's own trainer call."""
    import dataclasses

    from dpo_cli.runner.run import build_trainer as build_run_trainer
    from dpo_cli.train.config import settle_defaults
    from dpo_cli.train.device import plan_device
    from dpo_cli.train.models import load_models, load_processing_class
    from dpo_cli.train.plan import configure
    from dpo_cli.train.stages import get_stage
    from dpo_cli.train.stages.base import PlannedRun, StageInputs

    stage = get_stage(recipe.stage)
    if build is not None:
        stage = dataclasses.replace(stage, build_trainer=build)
    plan = plan_device(recipe.trainer)
    train, evaluation, data_info = stage.load_data(recipe)
    settled, defaults = settle_defaults(recipe, PlannedRun(plan, 1, lambda: data_info["train"]))
    recipe, args = settled, configure(recipe, settled, defaults, plan, 1).config
    models = load_models(recipe, stage, plan)
    inputs = StageInputs(recipe, args, models.policy, models.reference, load_processing_class(recipe.model), train,
                         evaluation if eval_data else None, [], models.peft_config)
    return build_run_trainer(stage, inputs, data_info, plan.precision)


# The trainer: section of a few-step DPO run of builtin:tiny-chat; tests override single keys (None drops one).
TINY_DPO_TRAINER = {"beta": 0.1, "learning_rate": 5.0e-3, "max_steps": 3, "per_device_train_batch_size": 4,
                    "per_device_eval_batch_size": 8, "max_length": 64, "logging_steps": 1, "save_strategy": '"no"'}


def tiny_dpo_recipe(train, eval, out, *, extra: str = "", **trainer) -> str:
    """A recipe's text: DPO on builtin:tiny-chat with ``train``/``eval`` data, TINY_DPO_TRAINER updated with
    ``trainer``, and ``extra`` (more sections) before output_dir."""
    fields = "".join(f"  {key}: {value}\n" for key, value in {**TINY_DPO_TRAINER, **trainer}.items()
                     if value is not None)
    return (f"stage: dpo\nmodel:\n  name_or_path: builtin:tiny-chat\ndata:\n  train: {train}\n  eval: {eval}\n"
            f"trainer:\n{fields}{extra}output_dir: {out}\n")


def demo_head(name: str, rows: int, folder) -> str:
    """The first ``rows`` of a bundled demo file (demo/NAME.jsonl) written into ``folder``: enough pairs for a few
    steps, few enough to stay fast on 2 cores."""
    from dpo_cli.core.builtins import asset_path

    lines = asset_path(f"demo/{name}.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


CHROMIUM = "/usr/bin/chromium"  # the Debian package; tests that render a page skip without it


def rendered_dom(html: str, folder, on_load: str) -> str:
    """The DOM headless Chromium holds once ``html`` has loaded, with ``on_load`` (JavaScript that records what it
    finds as body attributes) run at the load event; fails the test when the page does not finish loading."""
    import re
    import subprocess

    page = folder / "probe.html"
    page.write_text(html.replace("</body>", f"<script>addEventListener('load',()=>{{{on_load}}})</script></body>"))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={folder / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"<body[^>]* data-", done.stdout), "the page did not finish loading"
    return done.stdout


# the decoded width of every image on the page, as a body attribute (-1: not loaded)
IMAGE_WIDTHS = ("document.body.setAttribute('data-widths',"
                "[...document.images].map(i=>i.complete?i.naturalWidth:-1).join(','));")
