"""Property: whatever recipe or data a user hands train --dry-run or convert-data, the command exits 0 or 2, prints no
traceback, and leaves every input file byte for byte as it was."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import run_cli

pytestmark = pytest.mark.slow  # a few hundred commands, most of which load TRL's configs

STAGES = ["dpo", "sft", "kto", "reward", "grpo", "ppo", "orpo", "dop", ""]
TRAINER_KEYS = ["beta", "learning_rate", "max_steps", "per_device_train_batch_size", "max_length", "loss_type",
                "loss_weights", "save_strategy", "gradient_checkpointing", "bf16", "precompute_ref_log_probs",
                "padding_free", "num_train_epochs", "betta", "output_dir", "seed", "eval_strategy"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                    st.sampled_from(["no", "yes", "sigmoid", "[sigmoid, sft]", "5e-6", "builtin:tiny-chat", "{{x}}"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


@st.composite
def recipes(draw, data: str, out: str) -> dict:
    recipe = {"stage": draw(st.sampled_from(STAGES)),
              "model": draw(st.one_of(st.just({"name_or_path": "builtin:tiny-chat"}), values)),
              "data": draw(st.one_of(st.just({"train": data}), st.just({"train": data, "eval_split": 0.5}), values)),
              "trainer": draw(st.dictionaries(st.sampled_from(TRAINER_KEYS), values, max_size=4)),
              "output_dir": out}
    for key in draw(st.lists(st.sampled_from(["lora", "quantization", "ref_model", "reward", "seed", "env",
                                              "early_stopping", "watchdog", "bogus"]), max_size=2, unique=True)):
        recipe[key] = draw(values)
    for key in draw(st.lists(st.sampled_from(sorted(recipe)), max_size=1)):
        del recipe[key]
    return recipe


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _check(code: int, err: str, before: dict, folder: Path) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    for path, content in before.items():  # every input still there, unchanged (outputs may be new)
        assert Path(path).read_bytes() == content, f"{path} was changed"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_dry_run_of_any_recipe_exits_0_or_2_and_changes_nothing(data, capsys, tiny_model):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs = folder / "pairs.jsonl"
        pairs.write_text('{"prompt": "Hi?", "chosen": "Hello there.", "rejected": "Go away."}\n' * 4)
        recipe = data.draw(recipes(str(pairs), str(folder / "run")))
        path = folder / "r.yaml"
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
        before = _files(folder)
        code, _, err = run_cli(capsys, "train", str(path), "--dry-run")
        _check(code, err, before, folder)
        assert not (folder / "run").exists()  # a dry run writes nothing


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=12)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.sampled_from(
                                                       ["prompt", "chosen", "rejected", "messages", "role",
                                                        "content", "instruction", "output", "label", "completion",
                                                        "conversations", "from", "value"]), inner, max_size=4)),
                           max_leaves=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(json_values, st.text(max_size=20)), min_size=0, max_size=4),
       options=st.lists(st.sampled_from([["--skip-invalid"], ["--shuffle"], ["--dedupe"], ["--to", "kto"],
                                         ["--to", "prompt-only"], ["--eval-split", "0.5"], ["--limit", "1"],
                                         ["--where", "prompt == 'x'"], ["--format", "trl"]]), max_size=2))
def test_convert_data_of_any_rows_exits_0_or_2_and_changes_no_input(rows, options, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "in.jsonl"
        source.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows))
        before = _files(folder)
        code, _, err = run_cli(capsys, "convert-data", str(source), "-o", str(folder / "out.jsonl"),
                               *[a for option in options for a in option])
        _check(code, err, before, folder)
