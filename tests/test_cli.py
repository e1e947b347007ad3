"""The command line itself: help without torch, exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys

from helpers import run_cli


def test_help_runs_in_a_subprocess_without_importing_torch():
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "train" in done.stdout
    probe = ("import sys, dpo_cli.cli; heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') "
             "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_bad_input_is_one_line_exit_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dpo_cli", "train", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: recipe file not found: {tmp_path / 'missing.yaml'}"
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(capsys, tmp_path):
    import pytest

    from dpo_cli.core.errors import RecipeError

    with pytest.raises(RecipeError):
        run_cli(capsys, "--debug", "train", str(tmp_path / "missing.yaml"))


def test_dry_run_prints_plan_and_writes_nothing(capsys, tmp_path, write_recipe, cpu_only):
    out = tmp_path / "run"
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\n"
                          f"data: {{train: builtin:demo/train.jsonl}}\noutput_dir: {out}\n")
    code, stdout, _ = run_cli(capsys, "train", str(recipe), "trainer.beta=0.3", "--dry-run")
    assert code == 0
    assert "beta: 0.3" in stdout and "DPOConfig fields set by this recipe" in stdout
    assert "use_cpu" in stdout and "reference" in stdout and "frozen copy" in stdout
    assert not out.exists()


def test_data_file_missing(capsys, tmp_path, write_recipe):
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\n"
                          f"data: {{train: {tmp_path / 'nope.jsonl'}}}\noutput_dir: {tmp_path / 'run'}\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2
    assert f"{tmp_path / 'nope.jsonl'}: data file not found" in err


def test_data_without_expected_columns_says_what_it_found(capsys, tmp_path, write_recipe):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\n"
                          f"data: {{train: {data}}}\noutput_dir: {tmp_path / 'run'}\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2
    assert f"{data}:1: stage dpo reads preference pairs (prompt, chosen, rejected)" in err
    assert "cannot tell the data format from the columns (answer, question)" in err


def test_unreachable_model_is_one_clear_message(capsys, tmp_path, write_recipe):
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: no-such-org/no-such-model}}\n"
                          f"data: {{train: builtin:demo/eval.jsonl}}\noutput_dir: {tmp_path / 'run'}\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2
    assert "model 'no-such-org/no-such-model' is not a local directory and could not be fetched" in err
    assert "--local-dir" in err and "Traceback" not in err
