"""One plan per run: --dry-run prints a RunPlan (text and JSON from the same object), planned from TRL's cached
config defaults without importing TRL, and train builds its TRL config once, after the data has settled the run's
defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import REPO
from dpo_cli.core.errors import DataError
from dpo_cli.runner.run import train
from dpo_cli.train.config import settle_defaults
from dpo_cli.train.device import plan_device
from dpo_cli.train.memory import estimate_memory
from dpo_cli.train.plan import configure, plan
from dpo_cli.train.recipe_load import load_recipe
from dpo_cli.train.stages import get_stage
from dpo_cli.train.stages.base import PlannedRun
from helpers import run_cli

TINY = REPO / "recipes" / "tiny"

RECIPE = """\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: {train}, eval: builtin:demo/eval.jsonl}}
trainer:
  max_steps: 2
  logging_steps: 1
  per_device_train_batch_size: 4
  max_length: 64
  gradient_checkpointing: false
  save_strategy: "no"
output_dir: {out}
"""


@pytest.fixture
def configs_built(monkeypatch) -> list:
    """Every DPOConfig built from here on, in order (a plain TrainingArguments is not one)."""
    from trl import DPOConfig

    built: list = []
    original = DPOConfig.__post_init__

    def counted(self):
        built.append(self)
        original(self)

    monkeypatch.setattr(DPOConfig, "__post_init__", counted)
    return built


def test_the_dry_run_prints_the_plan_the_run_would_have_without_building_a_trl_config(
        tiny_model, write_recipe, tmp_path, cpu_only, capsys, configs_built):
    path = write_recipe(RECIPE.format(train="builtin:demo/train.jsonl", out=tmp_path / "out"))
    recipe = load_recipe(path, trl=False)

    run_plan, data_error = plan(recipe, processes=2)

    assert data_error is None and configs_built == [], "a dry run built a TRL config"
    assert run_plan.recipe is recipe and run_plan.config_class == "DPOConfig" and not run_plan.trl_checked
    # the recipe's values over TRL's defaults, as the run's DPOConfig will hold them
    assert run_plan.config.max_steps == 2 and run_plan.config_fields["max_steps"] == 2
    assert run_plan.config.beta == 0.1 and run_plan.config.loss_type == ["sigmoid"]  # DPOConfig's defaults
    assert run_plan.global_batch == {"per_device": 4, "accumulation": 1, "processes": 2, "rows": 8}
    assert run_plan.data["train"]["rows"] > 0 and run_plan.memory.total > 0
    # --json is that plan as json.dumps writes it: the same keys and values
    code, out, _ = run_cli(capsys, "train", str(path), "--dry-run", "--json", "--nproc", "2")
    assert code == 0 and configs_built == []
    assert json.loads(out) == json.loads(json.dumps(run_plan.to_json(), default=str))
    assert json.loads(out)["trl_checked"] is False
    code, out, _ = run_cli(capsys, "train", str(path), "--dry-run")
    assert code == 0 and "DPOConfig's own checks run when the run starts" in out
    assert not (tmp_path / "out").exists()


def test_the_quickstart_dry_run_imports_no_trl_trainer_peft_or_bitsandbytes(tiny_model, capsys):
    """TRL's trainers import transformers' Trainer, peft and bitsandbytes: most of a dry run's time, which the plan
    does without (a child process, so nothing this session imported counts)."""
    quickstart = str(REPO / "recipes" / "quickstart.yaml")
    assert run_cli(capsys, "train", quickstart, "--dry-run")[0] == 0  # fills this TRL's cache in the test's home
    child = textwrap.dedent(f"""\
        import atexit, sys
        heavy = ("peft", "bitsandbytes", "trl.trainer", "trl.experimental", "transformers.trainer")
        atexit.register(lambda: print("heavy:", sorted(m for m in sys.modules if m.startswith(heavy)),
                                      file=sys.stderr))
        sys.argv = ["dpo-cli", "train", {quickstart!r}, "--dry-run"]
        from dpo_cli.cli import main
        main()
        """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stderr, done.stderr[-2000:]


def _plain(value):
    """A config value as the planned values hold it: an enum as its value, a tuple as a list."""
    value = getattr(value, "value", value)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", sorted(p.stem for p in TINY.glob("*.yaml") if not p.stem.startswith("pipeline")))
def test_a_dry_run_plans_from_the_values_trls_config_will_hold(name, tiny_model, tmp_path, cpu_only):
    """Planned from TRL's cached defaults (no TRL) or from the TRL config the run builds, a plan is the same: each
    stage's config fields, global batch, reference and memory plan. Only the values TRL's __post_init__ derives
    from others differ, and no plan reads those."""
    stage = get_stage(yaml.safe_load((TINY / f"{name}.yaml").read_text())["stage"])
    if not stage.trains or stage.unavailable():
        pytest.skip(f"stage {stage.name} has no TRL config under this TRL")
    recipe = load_recipe(TINY / f"{name}.yaml", [f"output_dir={tmp_path}/out"])
    device = plan_device(recipe.trainer)
    settled, defaults = settle_defaults(recipe, PlannedRun(device, 1, lambda: None))
    built = configure(recipe, settled, defaults, device, 1)
    planned = configure(recipe, settled, defaults, device, 1, build=False)

    assert built.trl_checked and not planned.trl_checked
    assert {**planned.to_json(), "trl_checked": True} == built.to_json()
    # what TRL's __post_init__ derives or normalizes: the device's pin_memory (not planned from it), report_to
    # "none" as [], a deprecated name's twin, GRPO's generation batch (the sampling plan derives it from the batch size
    # and accumulation as TRL does), online DPO's one beta, TRL 1.12's SFT loss (None: chunked_nll)
    derived = {"accelerator_config", "activation_checkpointing", "dataloader_pin_memory", "debug", "disable_tqdm",
               "pad_to_multiple_of", "report_to", "generation_batch_size", "steps_per_generation"}
    derived |= {"online-dpo": {"beta"}, "sft": {"loss_type"}}.get(stage.name, set())
    differ = {key for key, value in vars(planned.config).items()
              if key not in derived and _plain(getattr(built.config, key)) != _plain(value)}
    assert differ == set(), sorted(differ)
    assert estimate_memory(settled, device, planned.config) == estimate_memory(settled, device, built.config)


def test_data_the_run_would_stop_at_comes_back_beside_the_plan(tiny_model, write_recipe, tmp_path, cpu_only):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n', encoding="utf-8")  # no rejected answer
    recipe = load_recipe(write_recipe(RECIPE.format(train=bad, out=tmp_path / "out")))

    run_plan, data_error = plan(recipe)

    assert isinstance(data_error, DataError) and "rejected" in str(data_error) and str(bad) in str(data_error)
    # the plan still stands: its config and device, with no data counted
    assert run_plan.config_class == "DPOConfig" and run_plan.device.device == "cpu" and run_plan.data == {}


@pytest.mark.slow
def test_a_run_builds_its_trl_config_once_after_the_defaults_are_settled(tiny_model, write_recipe, tmp_path,
                                                                         cpu_only, configs_built):
    out = tmp_path / "out"
    recipe = load_recipe(write_recipe(RECIPE.format(train="builtin:demo/train.jsonl", out=out)))
    configs_built.clear()

    result = train(recipe)

    assert result.manifest["status"] == "completed" and result.manifest["global_step"] == 2
    assert len(configs_built) == 1, "the run built its TRL config more than once"
    # the config the run trained with carries the defaults settled from its data, as run.json records them
    defaults = result.manifest["defaults"]
    assert configs_built[0].precompute_ref_log_probs is defaults["ref_model.precompute"]["value"]


def test_a_run_freezes_what_is_loaded_after_collecting_garbage_and_hands_it_back():
    """The cycle collector skips the objects alive when a run starts (the imports), but garbage waiting then, such as
    an earlier pipeline stage's trainer in a reference cycle, is freed first, and nothing stays frozen afterwards."""
    import gc
    import weakref

    from dpo_cli.runner.run import collector_skips_what_is_loaded

    class Stage:
        pass

    earlier = Stage()
    earlier.myself = earlier  # a cycle: only the collector frees it
    gone = weakref.ref(earlier)
    del earlier
    alive = Stage()
    before = gc.get_freeze_count()
    with collector_skips_what_is_loaded():
        assert gone() is None
        assert gc.get_freeze_count() > before and alive is not None
    assert gc.get_freeze_count() == before
