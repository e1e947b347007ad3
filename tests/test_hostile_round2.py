"""The second hostile round (issue 22, items 16 to 18) beyond the catalogue's one-line cases: inspect-data's report,
the stdlib JSON path, the beta rule per loss, and every stage that takes a beta."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli


def test_inspect_data_counts_a_lone_surrogate_as_a_bad_row(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "Q", "chosen": "A \\ud800", "rejected": "B"}\n'
                    '{"prompt": "Q", "chosen": "A", "rejected": "B"}\n', encoding="utf-8")
    code, out, err = run_cli(capsys, "inspect-data", str(data))
    assert code == 2, err
    assert "invalid-utf8" in out and "Traceback" not in err + out
    assert "1 rows fail a check" in out


def test_the_stdlib_parser_refuses_what_orjson_refuses(tmp_path, monkeypatch):
    from dpo_cli.core.errors import DataError
    from dpo_cli.data import readers

    monkeypatch.setattr(readers, "_fast_loads", readers._strict_loads)
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "Q", "chosen": [{"role": "assistant", "content": "\\udfff x"}], "rejected": "B"}\n',
                    encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(readers.iter_records(data))
    assert caught.value.field == "chosen[0].content" and caught.value.line == 1
    # a surrogate pair (an emoji written as two escapes) is one valid character
    data.write_text('{"prompt": "Q", "chosen": "\\ud83d\\ude00", "rejected": "B"}\n', encoding="utf-8")
    assert list(readers.iter_records(data))[0].row["chosen"] == "\U0001F600"


def test_a_lone_surrogate_in_a_key_is_named_without_breaking_the_message(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "Q", "chosen": "A", "rejected": "B", "x\\ud800": 1}\n', encoding="utf-8")
    code, _, err = run_cli(capsys, "convert-data", str(data), "-o", str(tmp_path / "o.jsonl"))
    assert code == 2 and "field 'x\\ud800'" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("stage, recipe_extra, beta, accepted", [
    ("dpo", "", 0, False),
    ("dpo", "  loss_type: sft\n", 0, True),  # the SFT loss alone has no beta
    ("dpo", "  loss_type: [sigmoid, sft]\n  loss_weights: [1.0, 1.0]\n", -0.1, False),
    ("orpo", "", 0, True),  # ORPO's lambda: 0 is plain SFT
    ("orpo", "", -1, False),
    ("simpo", "", -2, False),
    ("cpo", "", 0, False),
    ("rloo", "", 0, True),
    ("rloo", "", -0.01, False),
])
def test_beta_is_refused_where_the_loss_needs_it(write_recipe, tmp_path, stage, recipe_extra, beta, accepted):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.train.recipe_load import load_recipe

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n")
    reward = "reward:\n  functions: [length]\n" if stage == "rloo" else ""
    path = write_recipe(f"stage: {stage}\nmodel:\n  name_or_path: builtin:tiny-chat\ndata:\n  train: "
                        f"{tmp_path}/train.jsonl\ntrainer:\n  beta: {beta}\n{recipe_extra}{reward}"
                        f"output_dir: {tmp_path}/run\n")
    if accepted:
        assert load_recipe(path).trainer["beta"] == beta
    else:
        with pytest.raises(RecipeError, match="field 'trainer.beta': must"):
            load_recipe(path)


def test_online_dpo_checks_every_beta_of_its_list(write_recipe, tmp_path):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.train.recipe_load import load_recipe

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Q"}) + "\n")
    path = write_recipe(f"stage: online-dpo\nmodel:\n  name_or_path: builtin:tiny-chat\ndata:\n  train: "
                        f"{tmp_path}/train.jsonl\nreward:\n  functions: [length]\ntrainer:\n  beta: [0.1, -0.1]\n"
                        f"output_dir: {tmp_path}/run\n")
    with pytest.raises(RecipeError, match=r"must be positive \(got -0.1\)"):
        load_recipe(path)


def test_a_pipeline_stage_with_nan_names_the_stage_key(write_recipe, tmp_path):
    from dpo_cli.core.errors import RecipeError
    from dpo_cli.train.recipe_pipeline import load_pipeline

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n")
    path = write_recipe(f"output_dir: {tmp_path}/run\nstages:\n  - name: a\n    stage: dpo\n    model:\n"
                        f"      name_or_path: builtin:tiny-chat\n    data:\n      train: {tmp_path}/train.jsonl\n")
    with pytest.raises(RecipeError) as caught:
        load_pipeline(path, ["a.trainer.beta=.nan"])
    assert str(caught.value) == ("command-line override 'a.trainer.beta=.nan': field 'stages.0.trainer.beta': must be "
                                 "a finite number (got nan)")
    with pytest.raises(RecipeError, match="levels deep"):
        load_pipeline(path, ["a." + ".".join(["x"] * 100) + "=1"])


RECIPE = """\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
data: {{train: builtin:demo/train.jsonl}}
trainer:
  max_steps: {steps}
  save_steps: {save_steps}
  logging_steps: 1
  per_device_train_batch_size: 2
  max_length: 48
  gradient_checkpointing: false
output_dir: {out}
"""


def _full_disk_on(monkeypatch, fails):
    """safetensors' save_file, as transformers calls it, raising what it raises on a full disk when ``fails(path)``:
    a SafetensorError, which is neither an OSError nor a RuntimeError."""
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    original = modeling_utils.safe_save_file

    def save_file(tensors, filename, metadata=None):
        if fails(str(filename)):
            open(filename, "wb").write(b"\0" * 10)  # a part written before the disk filled
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)


@pytest.mark.slow
def test_a_full_disk_in_safetensors_at_a_checkpoint_leaves_no_unmarked_folder(tiny_model, tmp_path, monkeypatch,
                                                                             capsys):
    _full_disk_on(monkeypatch, lambda path: "checkpoint-4" in path)
    out = tmp_path / "run"
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=6, save_steps=2, out=out))
    code, _, err = run_cli(capsys, "train", str(tmp_path / "r.yaml"))
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: saving checkpoint-4 failed (Error while serializing: I/O error: No space left on device (os error "
        f"28)); the previous checkpoint {out / 'checkpoint-2'} is intact")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_full_disk_at_the_final_save_leaves_no_config_without_weights(tiny_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _full_disk_on(monkeypatch, lambda path: path == str(out / "model.safetensors"))
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=2, save_steps=2, out=out))
    code, _, err = run_cli(capsys, "train", str(tmp_path / "r.yaml"))
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: saving the final model to {out} failed (Error while serializing: I/O error: No space left on device "
        f"(os error 28)); the files it had written are removed; the newest complete checkpoint "
        f"{out / 'checkpoint-2'} is intact: resume from it with --resume auto")
    assert not any((out / name).exists() for name in ("config.json", "model.safetensors", "tokenizer.json"))
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["checkpoint"] == str(out / "checkpoint-2")


@pytest.mark.parametrize("files", [
    ["model.safetensors"],
    {"model.safetensors": {"bytes": "12", "sha256": "x"}},
    {"model.safetensors": None},
    {"../../outside": {"bytes": 1, "sha256": "x"}},
    "[" * 100_000 + "]" * 100_000,  # written as text: nested past what the JSON parser reads
])
def test_a_marker_with_values_dpo_cli_did_not_write_is_an_incomplete_checkpoint(tmp_path, files):
    import torch
    from safetensors.torch import save_file

    from dpo_cli.core.errors import InputError
    from dpo_cli.train import checkpoints

    folder = tmp_path / "run" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / checkpoints.MARKER).write_text(files if isinstance(files, str) else json.dumps({"step": 2, "files": files}))
    (folder / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    expected = "is empty or corrupt" if isinstance(files, str) else "is not as dpo-cli writes it"
    assert expected in checkpoints.problem(folder)
    with pytest.raises(InputError, match="cannot resume from it: its completion marker"):
        checkpoints.resolve_resume(tmp_path / "run", str(folder), print)
    with pytest.raises(InputError, match="no complete checkpoint"):
        checkpoints.resolve_resume(tmp_path / "run", "auto", lambda warning: None)



def _rows(path, n=3):
    path.write_text("".join(json.dumps({"prompt": f"Q{i}", "chosen": "A", "rejected": "B"}) + "\n" for i in range(n)))
    return path


def test_convert_data_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno

    from dpo_cli.data import writers

    def full(self, line, row=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers.JsonlWriter, "write", full)
    data = _rows(tmp_path / "in.jsonl")
    before = data.read_bytes()
    code, _, err = run_cli(capsys, "convert-data", str(data), "-o", str(tmp_path / "out" / "o.jsonl"))
    assert code == 1 and "Traceback" not in err
    assert err.strip() == f"error: cannot write {tmp_path / 'out' / 'o.jsonl'}: No space left on device; no output " \
                          "was written"
    assert list((tmp_path / "out").iterdir()) == [] and data.read_bytes() == before


def test_convert_data_into_a_read_only_directory_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    data = _rows(tmp_path / "in.jsonl")
    code, _, err = run_cli(capsys, "convert-data", str(data), "-o", str(tmp_path / "o.jsonl"), "--shuffle")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"error: cannot write {tmp_path / 'o.jsonl'}: Read-only file system; no output was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_convert_data_names_an_input_it_cannot_read(tmp_path, capsys, monkeypatch):
    import errno

    from dpo_cli.data import readers

    data = _rows(tmp_path / "in.jsonl")

    def unreadable(path, on_error):
        raise OSError(errno.EIO, "Input/output error", str(path))
        yield

    monkeypatch.setitem(readers.READERS, ".jsonl", unreadable)
    code, _, err = run_cli(capsys, "convert-data", str(data), "-o", str(tmp_path / "out" / "o.jsonl"))
    assert code == 2 and err.strip() == f"error: {data}: cannot be read (Input/output error)"


@pytest.fixture
def no_template_model(tiny_model, tmp_path):
    """The tiny model with its chat template taken out, as a base model's tokenizer has none."""
    import shutil

    model = tmp_path / "base"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_tokenizer_without_a_chat_template_on_conversations(no_template_model, tmp_path, capsys, dry_run):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "Q"}],
                                "chosen": [{"role": "assistant", "content": "A"}],
                                "rejected": [{"role": "assistant", "content": "B"}]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"stage: dpo\nmodel:\n  name_or_path: {no_template_model}\ndata:\n  train: {data}\n"
                      f"output_dir: {tmp_path}/run\n")
    code, _, err = run_cli(capsys, "train", str(recipe), *(["--dry-run"] if dry_run else []))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: the tokenizer of {no_template_model} has no chat template, and the training data is conversations "
        f"({data}:1 holds messages); set model.chat_template to a Jinja template (or a file holding one), or "
        f"model.tokenizer to a chat model's tokenizer")
    if not dry_run:  # stopped before any weights were loaded: the run says it failed, and saved no model
        assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
        assert not (tmp_path / "run" / "config.json").exists()
    # plain-text pairs need no template
    data.write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n")
    code, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 0, err


def _two_stage_pipeline(tmp_path):
    from dpo_cli.train.recipe_pipeline import load_pipeline

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n")
    stage = "    stage: dpo\n    model:\n      name_or_path: '{model}'\n    data:\n      train: " + str(tmp_path) \
        + "/train.jsonl\n"
    (tmp_path / "pipe.yaml").write_text(f"output_dir: {tmp_path}/out\nstages:\n  - name: a\n"
                                        + stage.format(model="builtin:tiny-chat")
                                        + "  - name: b\n" + stage.format(model="${a.output_dir}"))
    return load_pipeline(tmp_path / "pipe.yaml")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_between_pipeline_stages_says_where_the_pipeline_stopped(tmp_path, monkeypatch, signum):
    import os
    import signal

    from dpo_cli.cli import _terminated
    from dpo_cli.core.errors import Interrupted
    from dpo_cli.runner import pipeline as runner
    from dpo_cli.train.manifest import RunResult

    ran = []
    monkeypatch.setattr(runner, "run_stage", lambda recipe, **kwargs: ran.append(recipe.output_dir) or
                        RunResult(recipe.output_dir, {}))
    # the CLI's handlers, as a fresh process has them: main() installs SIGTERM's, SIGINT is Python's own (an earlier
    # test in this process may have left another)
    previous = signal.signal(signal.SIGTERM, _terminated), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted) as caught:
            runner.run_pipeline(_two_stage_pipeline(tmp_path),
                                on_result=lambda stage, result: os.kill(os.getpid(), getattr(signal, signum)))
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert len(ran) == 1
    assert caught.value.exit_code == 128 + getattr(signal, signum)
    assert str(caught.value) == (f"stopped by {signum} between stages, with a complete; run the same command again "
                                 "to go on from the first stage that is not complete")


def test_ctrl_c_outside_a_run_is_said(monkeypatch, capsys):
    from dpo_cli.data import convert

    def interrupted(options):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "convert", interrupted)
    code, _, err = run_cli(capsys, "convert-data", "x.jsonl", "-o", "y.jsonl")
    assert code == 130 and err.strip() == "error: stopped by SIGINT"


@pytest.mark.parametrize("beta", ["nan", "inf"])
def test_eval_refuses_a_beta_that_is_not_a_finite_number(tmp_path, capsys, beta):
    code, _, err = run_cli(capsys, "eval", str(tmp_path), "--beta", beta)
    assert code == 2 and err.strip() == f"error: --beta must be a finite number (got {beta})"


def test_inspect_data_on_a_file_whose_only_row_is_unreadable_reports_it(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "Q", "chosen": "A \\ud800", "rejected": "B"}\n', encoding="utf-8")
    code, out, err = run_cli(capsys, "inspect-data", str(data))
    assert code == 2 and "no rows" not in err and "invalid-utf8" in out and "1 rows fail a check" in out


def test_a_signal_during_the_template_check_stops_the_run_not_the_template(write_recipe, monkeypatch):
    """A signal lands wherever the process is: inside the chat-template probe, which reports whatever a template
    raises as a broken template, the stop must stay the stop (exit 128+N), not become exit 2 naming the template. CI
    caught it once: SIGTERM during the probe printed 'the chat template ... fails ...: Interrupted'."""
    import signal

    import trl.data_utils

    from dpo_cli.core.errors import Interrupted
    from dpo_cli.train.models import check_chat_template, load_tokenizer
    from dpo_cli.train.recipe_load import load_recipe

    def signal_arrives(*args, **kwargs):
        raise Interrupted("stopped by SIGTERM while preparing", signal.SIGTERM)

    recipe = load_recipe(write_recipe("stage: dpo\nmodel: {name_or_path: builtin:tiny-chat}\n"
                                      "data: {train: builtin:demo/train.jsonl}\n"))
    monkeypatch.setattr(trl.data_utils, "maybe_apply_chat_template", signal_arrives)
    with pytest.raises(Interrupted):
        check_chat_template(recipe, "preference", load_tokenizer(recipe.model))


def test_a_signal_landing_during_the_ranks_step_end_exchange_stops_them_at_the_next_step(monkeypatch):
    """Under several processes the ranks agree at each step's end, in an all_reduce, whether a signal came. One that
    lands while a rank waits in that collective is handled as it returns, after its flag was sent: it must stay
    pending for the next step (it was overwritten with the reduced 'no signal', and every rank trained on to the end;
    CI caught it under load)."""
    import signal
    from types import SimpleNamespace

    import torch.distributed as dist
    from transformers import TrainerControl

    from dpo_cli.train.interrupt import GracefulStop

    stopper = GracefulStop("dpo")
    stopper.phase = "train"
    exchanges = []

    def all_reduce(flag, op=None):  # the other rank sent 0; our own signal arrives during the first exchange
        exchanges.append(int(flag.item()))
        if len(exchanges) == 1:
            stopper._handle(signal.SIGTERM, None)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    args, state = SimpleNamespace(world_size=2, device="cpu"), SimpleNamespace(global_step=3)
    first = stopper.on_step_end(args, state, TrainerControl())
    assert not first.should_training_stop  # no rank had it when the flags were exchanged: none stops yet
    second = stopper.on_step_end(args, state, TrainerControl())
    assert exchanges == [0, signal.SIGTERM] and second.should_training_stop and second.should_save
    assert stopper.name() == "SIGTERM"
