"""Golden mapping: a recipe in, the exact TRL config fields out, with the device decision applied."""

from __future__ import annotations

from dpo_cli.train.config import build_config, trainer_kwargs
from dpo_cli.train.device import DevicePlan, plan_device
from dpo_cli.train.recipe_load import load_recipe

RECIPE = """\
stage: dpo
model: {name_or_path: builtin:tiny-chat}
data: {train: builtin:demo/train.jsonl}
trainer:
  beta: 0.25
  loss_type: [sigmoid, sft]
  loss_weights: [1.0, 0.5]
  learning_rate: 5.0e-6
  lr_scheduler_type: cosine
  gradient_accumulation_steps: 8
  max_length: 2048
output_dir: /tmp/golden
seed: 3
"""

CPU = DevicePlan("cpu", 0, "fp32", "test")
GPU = DevicePlan("cuda", 2, "bf16", "test")


def test_recipe_maps_to_exact_dpo_config_kwargs(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    assert trainer_kwargs(recipe, CPU) == {
        "report_to": "none", "bf16": False, "fp16": False, "use_cpu": True,
        "beta": 0.25, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "learning_rate": 5e-6,
        "lr_scheduler_type": "cosine", "gradient_accumulation_steps": 8, "max_length": 2048,
        "output_dir": "/tmp/golden", "seed": 3,
    }
    config = build_config(recipe, CPU)
    assert type(config).__name__ == "DPOConfig"
    assert (config.beta, config.loss_type, config.loss_weights) == (0.25, ["sigmoid", "sft"], [1.0, 0.5])
    assert (config.learning_rate, config.gradient_accumulation_steps, config.max_length) == (5e-6, 8, 2048)
    assert config.lr_scheduler_type.value == "cosine"
    assert (config.use_cpu, config.bf16, config.fp16, config.seed) == (True, False, False, 3)
    assert config.output_dir == "/tmp/golden" and config.report_to == []


def test_gpu_with_bf16_gets_bf16_and_no_use_cpu(write_recipe):
    kwargs = trainer_kwargs(load_recipe(write_recipe(RECIPE)), GPU)
    assert kwargs["bf16"] is True and kwargs["fp16"] is False and "use_cpu" not in kwargs


def test_recipe_precision_overrides_the_hardware_decision():
    assert plan_device({"bf16": True}).precision == "bf16"
    assert plan_device({"fp16": True}).precision == "fp16"
    assert plan_device({}).precision in {"fp32", "bf16", "fp16"}


def test_trl_cross_field_errors_become_recipe_errors(write_recipe):
    import pytest

    from dpo_cli.core.errors import RecipeError

    # loss_weights against loss_type: TRL's own check, run at recipe load and pointed at the key's line
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: field 'trainer.loss_weights': .*Got 1 weights for 2"):
        load_recipe(write_recipe(RECIPE.replace("loss_weights: [1.0, 0.5]", "loss_weights: [1.0]")))
    # what only TRL's own __post_init__ knows still arrives as a RecipeError
    recipe = load_recipe(write_recipe(RECIPE))
    recipe.trainer["loss_weights"] = [1.0]
    with pytest.raises(RecipeError, match="DPOConfig rejected the trainer: section: .*loss_weights"):
        build_config(recipe, CPU)


def _launched_with(monkeypatch, **env):
    """As accelerate launch leaves the environment of each process it starts (read once per process)."""
    from dpo_cli.train import device

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    device.launcher.cache_clear()
    monkeypatch.setattr(device, "detect_hardware", lambda: device.CPU)


def test_an_accelerate_config_mixed_precision_is_what_the_plan_uses(monkeypatch, write_recipe):
    """zero2.yaml on a CPU machine: DeepSpeed takes bf16 from the config, so TRL's config must ask for bf16 too
    (else transformers fails every rank with `ds bf16.enabled=True vs hf bf16=False`)."""
    from dpo_cli.train import device

    _launched_with(monkeypatch, ACCELERATE_MIXED_PRECISION="bf16", ACCELERATE_USE_DEEPSPEED="true")
    try:
        plan = plan_device({})
        assert plan.precision == "bf16" and "bf16 from the Accelerate config" in plan.reason
        assert device.launcher().kind == "DEEPSPEED"
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")  # TRL's config would then need deepspeed installed
        config = build_config(load_recipe(write_recipe(RECIPE)), plan)
        assert (config.bf16, config.use_cpu) == (True, True)
        assert plan_device({"fp16": True}).precision == "fp16"  # the recipe's own choice still wins
    finally:
        device.launcher.cache_clear()


def test_a_recipe_that_turns_off_the_launchers_mixed_precision_is_one_clear_error(monkeypatch):
    import pytest

    from dpo_cli.core.errors import InputError
    from dpo_cli.train import device

    _launched_with(monkeypatch, ACCELERATE_MIXED_PRECISION="bf16")
    try:
        with pytest.raises(InputError, match="asks for mixed_precision: bf16, .* the recipe sets trainer.bf16=false"):
            plan_device({"bf16": False})
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
        device.launcher.cache_clear()
        with pytest.raises(InputError, match="fp16, which needs a GPU"):
            plan_device({})
        assert plan_device({"bf16": True}).precision == "bf16"
    finally:
        device.launcher.cache_clear()
