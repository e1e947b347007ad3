"""The second hostile round (issue 22, items 12-15 and the merge key of 18): every file written goes through one
output check, secrets by any name or type stay out of every message and file, and YAML or data that would hang is
refused at once. One-line messages are in the catalogue (tests/catalogue.py); here are the cases that need more than
a message: inputs unchanged, nothing left behind, every file of a run scanned, hangs stopped by a timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli
from test_safety import PAIR, snapshot

RECIPE = """\
stage: dpo
model: {{name_or_path: {model}}}
data:
  train: {{path: {train}, skip_invalid: true, rejects: {rejects}}}
  eval: {eval}
trainer: {{max_steps: 1, per_device_train_batch_size: 2, max_length: 64}}
output_dir: {out}
"""


def _write_data(tmp_path: Path) -> tuple[Path, Path]:
    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text(PAIR + '{"prompt": "Q", "chosen": "A"}\n')
    held_out.write_text(PAIR)
    return train, held_out


def _cli(*args: str, timeout: int = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """dpo-cli in its own process: a case that hung once is stopped by the timeout instead of hanging the suite."""
    return subprocess.run([sys.executable, "-m", "dpo_cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 12-13: one output check for every file a command writes ------------------------------------------------------

@pytest.mark.parametrize("target, says", [
    ("{train}", "is the input"), ("{eval}", "is the input"), ("{recipe}", "is the input"),
    ("{model}/tokenizer.json", "lies inside the input"), ("{out}/../model/config.json", "lies inside the input"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_rejects_file_never_replaces_an_input(tmp_path, capsys, tiny_model, target, says, dry_run):
    train, held_out = _write_data(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "run"
    rejects = target.format(train=train, eval=held_out, recipe=recipe, model=model, out=out)
    recipe.write_text(RECIPE.format(model=model, train=train, rejects=rejects, eval=held_out, out=out))
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "train", str(recipe), *(["--dry-run"] if dry_run else []))
    assert code == 2 and says in _one_error_line(err) and "field 'data.train.0.rejects'" in err, err
    assert snapshot(tmp_path) == before  # the input as it was, and nothing new beside it


def test_a_rejects_file_never_goes_into_a_saved_model_that_is_not_an_input(tmp_path, capsys, tiny_model):
    """The built-in model is no path in the recipe; its directory is a saved model all the same."""
    train, held_out = _write_data(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model="builtin:tiny-chat", train=train, rejects=tiny_model / "tokenizer.json",
                                    eval=held_out, out=tmp_path / "run"))
    before = snapshot(tiny_model)
    code, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 2 and f"lies inside the saved model {tiny_model}" in _one_error_line(err)
    assert snapshot(tiny_model) == before


def test_a_rejects_file_of_a_registry_source_never_replaces_the_registry(tmp_path, capsys):
    train, _ = _write_data(tmp_path)
    registry = tmp_path / "dataset_info.json"
    registry.write_text(json.dumps({"pairs": {"file_name": str(train), "ranking": True,
                                              "columns": {"prompt": "prompt", "chosen": "chosen",
                                                          "rejected": "rejected"}}}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\ndata:\n  train: {{registry: "
                      f"{registry}, name: pairs, skip_invalid: true, rejects: {registry}}}\noutput_dir: "
                      f"{tmp_path / 'run'}\n")
    code, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 2 and f"rejects file {registry} is the input {registry}" in _one_error_line(err)


def test_two_sources_may_not_share_a_rejects_file(tmp_path, capsys):
    train, held_out = _write_data(tmp_path)
    recipe = tmp_path / "r.yaml"
    source = "{{path: {}, skip_invalid: true, rejects: {}}}"
    recipe.write_text(RECIPE.format(model="builtin:tiny-chat", train=train, rejects=tmp_path / "bad.jsonl",
                                    eval=source.format(held_out, tmp_path / "bad.jsonl"), out=tmp_path / "run"))
    code, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 2 and "is also the rejects file of data.train.0" in _one_error_line(err)


def test_an_existing_rejects_file_is_replaced_only_with_overwrite_and_may_live_in_the_runs_own_directory(tmp_path):
    from dpo_cli.core.errors import InputError
    from dpo_cli.core.rundir import RunDir
    from dpo_cli.train.manifest import check_output_dir
    from dpo_cli.train.recipe_load import load_recipe

    train, held_out = _write_data(tmp_path)
    out = tmp_path / "run"  # an earlier run: a saved model, its rejects file beside it
    out.mkdir()
    for name, text in (("run.json", "{}"), ("config.json", "{}"), ("model.safetensors", "w"), ("rejects.jsonl", "")):
        (out / name).write_text(text)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model="builtin:tiny-chat", train=train, rejects=out / "rejects.jsonl",
                                    eval=held_out, out=out))
    loaded = load_recipe(recipe)  # inside its own output_dir: not someone else's model
    with pytest.raises(InputError, match="exists; pass --overwrite to replace it"):
        check_output_dir(RunDir(out), loaded, overwrite=False)
    check_output_dir(RunDir(out), loaded, overwrite=True)
    check_output_dir(RunDir(out), loaded, overwrite=False, resuming=True)


def test_import_recipe_force_never_replaces_its_own_input(tmp_path, capsys):
    source = tmp_path / "lf.yaml"
    source.write_text("stage: dpo\nmodel_name_or_path: m\ndataset: dpo_en_demo\n")
    before = snapshot(tmp_path)
    for output in (source, tmp_path / "." / "lf.yaml"):
        code, _, err = run_cli(capsys, "import-recipe", str(source), "-o", str(output), "--force")
        assert code == 2 and "is the input" in _one_error_line(err)
    link = tmp_path / "link.yaml"  # a second name for the input: replacing it would replace the link
    os.link(source, link)
    code, _, err = run_cli(capsys, "import-recipe", str(source), "-o", str(link), "--force")
    assert code == 2 and "is the input" in _one_error_line(err)
    link.unlink()
    assert snapshot(tmp_path) == before


def test_report_and_score_replace_an_existing_file_only_with_force(tmp_path, capsys):
    from test_safety import fake_run

    run = fake_run(tmp_path / "run")
    notes = tmp_path / "notes.html"
    notes.write_text("mine")
    code, _, err = run_cli(capsys, "report", str(run), "-o", str(notes))
    assert code == 2 and "exists; pass --force" in _one_error_line(err) and notes.read_text() == "mine"
    code, _, err = run_cli(capsys, "report", str(run), "-o", str(notes), "--force")
    assert code == 0, err
    assert notes.read_text().startswith("<!doctype html>")
    code, _, err = run_cli(capsys, "report", str(run))  # its own report.html is always replaced
    assert code == 0 and (run / "report.html").exists(), err


# --- 14: secrets by any name, of any type, in any URL -------------------------------------------------------------

SECRETS = {"PGPASSWORD": "pg-Secret-0001", "NGROK_AUTHTOKEN": "ngrok-Secret-0002",
           "Authorization": "Bearer Secret-0003", "APITOKEN": "api-Secret-0004", "SECRETKEY": "sk-Secret-0005",
           "DATABASE_URL": "postgres://app:db-Secret-0006@db.example/x", "GITHUB_PAT": "ghp-Secret-0007",
           "MY_PASSPHRASE": "phrase-Secret-0008"}
SECRET_VALUES = [v.rpartition(":")[2].partition("@")[0] if "://" in v else v for v in SECRETS.values()]


@pytest.mark.parametrize("key", [*(k for k in SECRETS if k != "DATABASE_URL"), "AWS_SECRET_ACCESS_KEY", "DB_DSN", "session_cookie", "clientSecret",
                                 "access_token", "basic_auth", "DB_PASSWORD_2", "API_KEY_2", "HF_TOKEN2"])
def test_credential_names_are_secret(key):
    from dpo_cli.core.redact import is_secret_key

    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["path", "patience", "name_or_path", "max_length", "keep", "tokenizer", "passage",
                                 "bypass", "monkey", "mean_token_accuracy", "kl_per_token", "pad_token_id",
                                 "num_tokens", "hub_private_repo", "sort_key", "token_file", "session_id",
                                 "DATABASE_URL", "include_num_input_tokens_seen", "average_tokens_across_devices"])
def test_ordinary_names_are_not_secret(key):
    from dpo_cli.core.redact import is_secret_key

    assert not is_secret_key(key)


def test_every_trl_and_recipe_field_but_the_hub_token_is_not_secret():
    """A false positive would hide a setting from run.json and scrub its value from every message."""
    import dataclasses

    from pydantic import BaseModel

    from dpo_cli.core.redact import is_secret_key
    from dpo_cli.recipe.schema import Recipe
    from dpo_cli.train.stages import STAGES

    names = set()
    for stage in STAGES.values():
        if stage.trains and not stage.unavailable():
            names |= {f.name for f in dataclasses.fields(stage.config_class())}
    models = [Recipe]
    while models:
        model = models.pop()
        for name, field in model.model_fields.items():
            names.add(name)
            models += [a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                       if isinstance(a, type) and issubclass(a, BaseModel)]
    assert sorted(n for n in names if is_secret_key(n)) == ["hub_token"]


def test_values_under_secret_keys_are_redacted_whatever_their_type_and_urls_lose_their_userinfo():
    from dpo_cli.core.redact import redact, redact_text

    out = json.dumps(redact({"env": {"DB_PASSWORD": 98765.4321, "API_TOKEN": ["tok-aaaa1111", "tok-bbbb2222"],
                                     "SECRETKEY": {"inner": "inner-cccc3333"}},
                             "model": "https://user:hunter2pass@example.com/org/m",
                             "note": "pushed with tok-aaaa1111 and inner-cccc3333"}))
    for secret in ("98765.4321", "tok-aaaa1111", "tok-bbbb2222", "inner-cccc3333", "hunter2pass"):
        assert secret not in out
    assert "https://<redacted>@example.com/org/m" in out
    assert redact_text("git clone https://ghp_token1234@github.com/x") == "git clone https://<redacted>@github.com/x"


def test_a_map_under_a_secret_key_is_not_echoed_by_validation(tmp_path, capsys, write_recipe):
    train, _ = _write_data(tmp_path)
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\ndata: {{train: {train}}}\n"
                          f"output_dir: {tmp_path / 'run'}\nenv:\n  API_TOKEN: {{inner: zzzz-9999-secret}}\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "zzzz-9999-secret" not in err and "<redacted>" in _one_error_line(err)


def test_a_password_in_the_model_url_reaches_no_message_and_no_file(tmp_path, capsys, write_recipe):
    train, _ = _write_data(tmp_path)
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: 'https://me:url-Secret-55@models.example/org/m'}}\n"
                          f"data: {{train: {{path: {train}, skip_invalid: true}}}}\noutput_dir: {tmp_path / 'run'}\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "https://<redacted>@models.example/org/m" in _one_error_line(err)
    assert "url-Secret-55" not in err
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert [p for p in written if b"url-Secret-55" in p.read_bytes()] == []


def test_a_password_in_a_registry_file_name_is_not_echoed(tmp_path, capsys):
    registry = tmp_path / "dataset_info.json"
    registry.write_text(json.dumps({"pairs": {"file_name": "https://me:reg-Secret-77@data.example/p.json",
                                              "ranking": True}}))
    code, _, err = run_cli(capsys, "convert-data", "--registry", str(registry), "--name", "pairs", "-o",
                           str(tmp_path / "o.jsonl"))
    assert code == 2 and "reg-Secret-77" not in err and "<redacted>" in _one_error_line(err)


@pytest.mark.parametrize("as_json", [False, True])
def test_a_dry_run_prints_no_secret_by_any_name(tmp_path, capsys, write_recipe, as_json):
    train, _ = _write_data(tmp_path)
    env = "".join(f"  {key}: '{value}'\n" for key, value in SECRETS.items())
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\ndata: {{train: {{path: {train}, "
                          f"skip_invalid: true}}}}\ntrainer: {{run_name: 'run-{SECRET_VALUES[1]}'}}\noutput_dir: "
                          f"{tmp_path / 'run'}\nenv:\n{env}")
    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run", *(["--json"] if as_json else []))
    assert code == 0, err
    assert "env" in out and "run-<redacted>" in out
    assert [s for s in SECRET_VALUES if s in out + err] == []


@pytest.mark.slow
def test_a_pipeline_run_writes_no_secret_by_any_name_in_any_file(tiny_model, tmp_path):
    """The secrets of an env: section by other names, a hub_token given as a pipeline override and reused in the
    stage's run_name: none in the console, run.json, recipe.resolved.yaml, training_args.json or the report."""
    pipeline = tmp_path / "p.yaml"
    env = "".join(f"      {key}: '{value}'\n" for key, value in SECRETS.items())
    pipeline.write_text(f"output_dir: {tmp_path / 'runs'}\nstages:\n  - name: b\n    stage: dpo\n    model: "
                        f"{{name_or_path: builtin:tiny-chat}}\n    data: {{train: builtin:demo/train.jsonl}}\n    "
                        "trainer: {max_steps: 2, save_steps: 1, per_device_train_batch_size: 2, max_length: 48}\n"
                        f"    env:\n{env}")
    hub_token = "hf_pipeline-Secret-0009"
    done = _cli("train", str(pipeline), f"b.trainer.hub_token={hub_token}", f"b.trainer.run_name=run-{hub_token}",
                timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = _cli("report", str(tmp_path / "runs"))
    assert report.returncode == 0, report.stderr[-2000:]
    secrets = [*SECRET_VALUES, hub_token]
    assert [s for s in secrets if s in done.stdout + done.stderr + report.stdout + report.stderr] == []
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert {"run.json", "recipe.resolved.yaml", "training_args.json", "report.html"} <= {p.name for p in files}
    assert [(str(p), s) for p in files for s in secrets if s.encode() in p.read_bytes()] == []


# --- 15: nothing hangs: aliases, recursion, pipes, devices --------------------------------------------------------

def test_an_override_value_with_aliases_of_aliases_is_refused_at_once():
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.recipe.yamlfile import parse_scalar

    laughs = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * 9) + "]" for i in range(9)) + "]"
    with pytest.raises(RecipeError, match="billion laughs"):
        parse_scalar(laughs)
    assert parse_scalar("[&a [1, 2], *a]") == [[1, 2], [1, 2]]  # a few aliases are YAML as usual


@pytest.mark.parametrize("kind", ["fifo", "device"])
# train's process imports TRL before it reads the data (6-10 s a process): the slow lane
@pytest.mark.parametrize("command", ["inspect-data", pytest.param("train", marks=pytest.mark.slow)])
def test_a_pipe_or_a_device_as_data_is_refused_in_one_line(tmp_path, kind, command):
    data = tmp_path / "train.jsonl"
    if kind == "fifo":
        os.mkfifo(data)
    else:
        data.symlink_to("/dev/zero")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\ndata: {{train: {data}}}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    args = [str(data)] if command == "inspect-data" else [str(recipe), "--dry-run"]
    done = _cli(command, *args, timeout=60)
    assert done.returncode == 2
    # that line alone: no library chatter (bitsandbytes' and kernels' notices offline), no traceback
    assert done.stderr.strip() == (f"error: {data}: not a regular file (a pipe, device or socket); give a data file "
                                   "or directory")


# --- 18: a YAML merge key is YAML -----------------------------------------------------------------------------------

def test_a_yaml_merge_key_is_read_and_keys_beside_it_win(tmp_path, write_recipe):
    from dpo_cli.train.recipe_load import load_recipe

    train, held_out = _write_data(tmp_path)
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\ndata:\n  train: &source\n    "
                          f"path: {train}\n    skip_invalid: true\n  eval:\n    <<: *source\n    path: {held_out}\n"
                          f"output_dir: {tmp_path / 'run'}\n")
    loaded = load_recipe(recipe)
    assert loaded.data.eval == [{"path": str(held_out), "skip_invalid": True}]


def test_a_key_twice_beside_a_merge_key_is_still_refused(tmp_path, capsys, write_recipe):
    recipe = write_recipe("stage: dpo\nmodel: &m {name_or_path: builtin:tiny-chat}\nref_model:\n  <<: *m\n"
                          "  name_or_path: a\n  name_or_path: b\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "key 'name_or_path' appears twice in the same section, at lines 5 and 6" in \
        _one_error_line(err)


def test_an_error_beside_a_merge_key_points_at_the_key_that_wins(tmp_path, capsys, write_recipe):
    train, _ = _write_data(tmp_path)
    recipe = write_recipe(f"stage: dpo\nmodel: {{name_or_path: builtin:tiny-chat}}\ndata:\n  train: &source\n    "
                          f"path: {train}\n    limit: 5\n  eval:\n    <<: *source\n    limit: -1\n"
                          f"output_dir: {tmp_path / 'run'}\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and _one_error_line(err).startswith(f"error: {recipe}:9: field 'data.eval.0.limit'"), err
