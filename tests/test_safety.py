"""Issue 15's attacks that need no training: outputs never over inputs, one run per directory, recipes read as written,
secrets kept out, broken models named. Every test compares the bytes of what a command read before and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_cli.core.builtins import asset_path
from helpers import run_cli

PAIR = '{"prompt": "Hi?", "chosen": "Hello! How can I help?", "rejected": "Go away."}\n'
RECIPE = """\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: {train}}}
trainer: {{max_steps: 1, per_device_train_batch_size: 2, max_length: 64}}
output_dir: {out}
"""


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` with its bytes (a file root: itself)."""
    files = {}
    for root in roots:
        for path in ([root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())):
            files[str(path)] = path.read_bytes()
    return files


def fake_run(folder: Path, *, status: str = "completed", weights: bool = True) -> Path:
    """A run directory as dpo-cli leaves one (the files these commands read before any model loads)."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"dpo_cli_version": "0.1.0", "status": status, "stage": "dpo"}))
    (folder / "recipe.resolved.yaml").write_text(RECIPE.format(train=asset_path("demo/train.jsonl"), out=folder))
    (folder / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 0.69}\n')
    if weights:
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "builtin:tiny-chat"}))
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


# --- 1-7: a command never destroys its input ----------------------------------------------------------------------

def test_check_output_refuses_the_input_what_contains_it_and_what_lies_inside_it(tmp_path):
    from dpo_cli.core.errors import InputError
    from dpo_cli.core.paths import check_output

    run = fake_run(tmp_path / "parent" / "run")
    for output, says in ((run, "is the input"), (tmp_path / "parent", "contains the input"),
                         (run / "model.safetensors", "lies inside the input")):
        with pytest.raises(InputError, match=says):
            check_output(output, [run])
    check_output(run / "report.html", [run], allowed=[run / "report.html"])
    check_output(tmp_path / "elsewhere", [run])


@pytest.mark.parametrize("output", ["{run}/model.safetensors", "{run}/run.json", "{run}"])
def test_report_never_writes_over_its_run(tmp_path, capsys, output):
    run = fake_run(tmp_path / "run")
    before = snapshot(run)
    code, _, err = run_cli(capsys, "report", str(run), "-o", output.format(run=run))
    assert code == 2 and "error: --output" in err and "Traceback" not in err
    assert snapshot(run) == before


def test_report_may_replace_its_own_report_html(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    code, _, err = run_cli(capsys, "report", str(run), "-o", str(run / "report.html"))
    assert code == 0, err
    assert (run / "report.html").read_text().startswith("<!doctype html>")


def test_score_never_writes_over_its_data(tmp_path, capsys, tiny_model):
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIR)
    before = snapshot(data)
    code, _, err = run_cli(capsys, "score", str(tiny_model), "--data", str(data), "-o", str(data))
    assert code == 2 and f"--output {data} is the input" in err
    assert snapshot(data) == before


def test_train_never_writes_over_its_training_data(tmp_path, capsys, write_recipe):
    out = fake_run(tmp_path / "out")
    recipe = write_recipe(RECIPE.format(train=out / "metrics.jsonl", out=out))
    before = snapshot(out)
    code, _, err = run_cli(capsys, "train", str(recipe), "--overwrite")
    assert code == 2 and f"output_dir {out} contains the input {out / 'metrics.jsonl'}" in err
    assert snapshot(out) == before


def test_overwrite_replaces_only_a_dpo_cli_run(tmp_path, capsys, write_recipe):
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIR)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    before = snapshot(mine)
    code, _, err = run_cli(capsys, "train", str(write_recipe(RECIPE.format(train=data, out=mine))), "--overwrite")
    assert code == 2 and "was not written by dpo-cli (no run.json in it)" in err
    assert snapshot(mine) == before


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys, write_recipe):
    data, out = tmp_path / "pairs.jsonl", tmp_path / "out"
    data.write_text(PAIR)
    out.write_text("a file")
    code, _, err = run_cli(capsys, "train", str(write_recipe(RECIPE.format(train=data, out=out))))
    assert code == 2 and f"output_dir {out} is a file" in err and out.read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_output_dir_is_refused(tmp_path, capsys, write_recipe):
    data, parent = tmp_path / "pairs.jsonl", tmp_path / "ro"
    data.write_text(PAIR)
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "train", str(write_recipe(RECIPE.format(train=data, out=parent / "run"))))
    finally:
        parent.chmod(0o755)
    assert code == 2 and "cannot be written" in err


def test_a_second_run_into_a_locked_directory_is_refused_with_the_first_ones_pid(tmp_path):
    from dpo_cli.core.errors import InputError
    from dpo_cli.core.paths import LOCK, run_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom dpo_cli.core.paths import run_lock\n"
                               f"with run_lock({str(tmp_path)!r}):\n    print('locked', flush=True)\n"
                               "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=rf"in use by another dpo-cli run \(pid {holder.pid}, started "):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / LOCK).exists()  # killed: its lock file stays behind, its flock is gone


def test_a_stale_lock_from_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    from dpo_cli.core.paths import LOCK, run_lock

    (tmp_path / LOCK).write_text(json.dumps({"pid": 999999, "started": "2026-01-01T00:00:00+00:00"}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "taking over the lock" in err and "left by pid 999999" in err
    assert not (tmp_path / LOCK).exists()  # removed on the way out


# --- 13-15: one line, exit 2, no traceback; nothing silently wrong -------------------------------------------------

def _train_error(capsys, recipe: Path, *overrides: str) -> str:
    code, _, err = run_cli(capsys, "train", str(recipe), *overrides, "--dry-run")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_a_recipe_with_a_latin1_byte(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"stage: dpo\nmodel: {name_or_path: caf\xe9}\n")
    assert _train_error(capsys, path) == f"error: {path}:2: not UTF-8 text: byte 0xe9 at column 26; save the " \
                                         f"recipe as UTF-8"


def test_a_key_given_twice_names_both_lines(tmp_path, capsys, write_recipe):
    path = write_recipe(RECIPE.format(train="x.jsonl", out=tmp_path / "o").replace("max_steps: 1,",
                                                                                   "max_steps: 1, max_steps: 2,"))
    assert "key 'max_steps' appears twice in the same section, at lines 4 and 4" in _train_error(capsys, path)
    path = write_recipe("stage: dpo\nstage: sft\n")
    assert _train_error(capsys, path) == f"error: {path}:2: field 'stage': key 'stage' appears twice in the same " \
                                         f"section, at lines 1 and 2; PyYAML would keep the second without a word: " \
                                         f"remove one"


@pytest.mark.parametrize("override, message", [
    ("trainer.per_device_train_batch_size=0", "field 'trainer.per_device_train_batch_size': must be positive (got 0)"),
    ("trainer.per_device_train_batch_size=-4", "must be positive (got -4)"),
    ("trainer.max_length=0", "field 'trainer.max_length': must be positive (got 0)"),
    ("seed=99999999999999999999999", "field 'seed': Input should be less than 4294967296"),
    ("model.chat_template=templates/chat.jinja", "looks like a file path, but there is no such file"),
    ("model.chat_template={% if %}", "the Jinja template does not parse"),
    ("sedd.x=1", "command-line override 'sedd.x=1': field 'sedd': unknown key 'sedd'; did you mean 'seed'?"),
])
def test_values_that_only_failed_at_train_time_fail_at_load(tmp_path, capsys, write_recipe, override, message):
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIR)
    assert message in _train_error(capsys, write_recipe(RECIPE.format(train=data, out=tmp_path / "o")), override)


def test_save_strategy_no_stays_the_string_trl_expects(tmp_path, write_recipe):
    from dpo_cli.train.recipe_load import load_recipe

    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIR)
    recipe = write_recipe(RECIPE.format(train=data, out=tmp_path / "o").replace("max_length: 64}",
                                                                                "max_length: 64, save_strategy: no}"))
    assert load_recipe(recipe).trainer["save_strategy"] == "no"
    assert load_recipe(recipe, ["trainer.eval_strategy=no", "plot=no"]).plot is False


def test_eval_refuses_a_negative_beta(tmp_path, capsys, tiny_model):
    code, _, err = run_cli(capsys, "eval", str(tiny_model), "--data", "builtin:demo/eval.jsonl", "--beta", "-1")
    assert code == 2 and "--beta must be positive (got -1.0)" in err


def test_a_1500_stage_pipeline_cycle_is_found_without_recursion(tmp_path, write_recipe):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.train.recipe_pipeline import load_pipeline

    stages = "".join(f"  - name: s{i}\n    stage: sft\n    model: {{name_or_path: '${{s{(i + 1) % 1500}.output_dir}}'}}\n"
                     f"    data: {{train: x.jsonl}}\n" for i in range(1500))
    with pytest.raises(RecipeError, match="stages refer to each other in a cycle: s0 -> s1 -> s2"):
        load_pipeline(write_recipe(f"output_dir: {tmp_path}\nstages:\n{stages}"))


def test_the_same_rows_for_training_and_held_out_are_named(tmp_path, capsys):
    from dpo_cli.data.load import load_splits
    from dpo_cli.recipe.schema import DataSection

    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIR * 3)
    load_splits(DataSection(train=[str(data)], eval=[str(data)]), 42, "preference")
    assert "data.eval holds the same rows as data.train" in capsys.readouterr().err


def test_an_empty_model_directory_and_a_truncated_model_are_one_line_each(tmp_path, capsys, tiny_model):
    import shutil

    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIR)
    for model, says in ((empty, "holds no config.json"), (broken, "cannot be loaded (Error while deserializing")):
        code, _, err = run_cli(capsys, "eval", str(model), "--data", str(data))
        assert code == 2 and says in err and "Traceback" not in err, err


def test_compare_on_a_run_that_saved_no_model(tmp_path, capsys):
    run = fake_run(tmp_path / "run", status="failed", weights=False)
    code, _, err = run_cli(capsys, "compare", "--tuned", str(run), "--data", "builtin:demo/eval.jsonl")
    assert code == 2 and "holds no saved model (run status: failed)" in err


# --- 16-17: secrets ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["apiKey", "DB_PASS", "SERVICE_CREDENTIALS", "X-Auth-Token", "my_pwd",
                                 "privateKey", "session_cookie", "hub_token"])
def test_secret_key_names(key):
    from dpo_cli.core.redact import is_secret_key

    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "tokenizer", "pad_token", "eos_token", "author", "sort_keys",
                                 "passes", "keep_end"])
def test_names_that_are_not_secrets(key):
    from dpo_cli.core.redact import is_secret_key

    assert not is_secret_key(key)


def test_a_secret_is_scrubbed_wherever_it_reappears():
    from dpo_cli.core.redact import redact

    out = redact({"trainer": {"hub_token": "hf_abcdefgh", "run_name": "run-hf_abcdefgh"},
                  "env": {"apiKey": "k-123456", "URL": "https://x/?key=k-123456", "DB_PASS": "hunter22"},
                  "note": "hunter22 and k-123456"})
    assert "hf_abcdefgh" not in json.dumps(out) and "k-123456" not in json.dumps(out)
    assert "hunter22" not in json.dumps(out) and out["trainer"]["run_name"] == "run-<redacted>"


def test_an_error_never_echoes_a_secret(tmp_path, capsys, write_recipe):
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIR)
    recipe = write_recipe(RECIPE.format(train=data, out=tmp_path / "o"))
    err = _train_error(capsys, recipe, "env.MY_TOKEN=12345678901234")
    assert "12345678901234" not in err and "<redacted>" in err


@pytest.mark.slow
def test_sigterm_during_convert_data_leaves_no_temporary_file(tmp_path):
    import signal
    import time

    source = tmp_path / "in.jsonl"
    with open(source, "w", encoding="utf-8") as f:
        for i in range(200_000):
            f.write(json.dumps({"prompt": f"question {i}", "chosen": "a good answer", "rejected": "a bad one"}) + "\n")
    before = snapshot(source)
    process = subprocess.Popen([sys.executable, "-m", "dpo_cli", "convert-data", str(source), "-o",
                                str(tmp_path / "out.jsonl"), "--shuffle", "--eval-split", "0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".dpo-cli-spool.*")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "stopped by SIGTERM" in err, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no spool, no .tmp, no partial output
    assert snapshot(source) == before
