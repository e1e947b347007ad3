"""Defects found on real files (issue 18, item 5): each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_cli.data.convert import ConvertOptions, convert
from dpo_cli.data.inspection import inspect
from dpo_cli.data.load import load_training_data
from test_data_convert import run_cli  # pytest puts tests/ on sys.path

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_file_named_twice_is_read_twice_with_a_warning(tmp_path):
    data = str(FIXTURES / "trl_standard.jsonl")
    summary = convert(ConvertOptions(inputs=[data, data], output=tmp_path / "out.jsonl"))
    assert summary.written == 4
    assert summary.stats.warned == {"read-twice": 2}
    assert summary.stats.warned_at["read-twice"][0].startswith(f"{data}:1")
    report = inspect([data, data])
    assert report.rows == 4 and report.duplicates == 2 and report.stats.warned == {"read-twice": 2}
    dataset, _ = load_training_data([data, data])
    assert len(dataset) == 4


def test_one_file_read_by_two_sources_with_different_columns_and_where(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"q": f"question {i}", "good": f"yes {i}", "bad": f"no {i}", "n": i}
                                          for i in range(4)])
    dataset, _ = load_training_data([
        {"path": str(path), "columns": {"prompt": "q", "chosen": "good", "rejected": "bad"}, "where": "n < 2"},
        {"path": str(path), "columns": {"prompt": "q", "chosen": "bad", "rejected": "good"}, "where": "n >= 2"},
    ])
    assert dataset["chosen"] == ["yes 0", "yes 1", "no 2", "no 3"]
    report = inspect([str(path), str(path)], columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert report.rows == 8


def test_inspect_and_convert_name_the_same_line_and_reason_for_array_lines(tmp_path):
    path = tmp_path / "arrays.jsonl"
    path.write_text('[1, 2]\n["a"]\n', encoding="utf-8")
    place = f"{path}:1: expected a JSON object, found an array"
    converted = run_cli("convert-data", str(path), "-o", str(tmp_path / "out.jsonl"))
    assert converted.returncode == 2 and place in converted.stderr
    inspected = run_cli("inspect-data", str(path))
    assert inspected.returncode == 2, inspected.stderr
    assert place in " ".join(inspected.stdout.split())  # rich may wrap the line
    report = inspect([str(path)])
    assert report.stats.read == 2 and report.stats.dropped == {"not-object": 2} and report.rows == 0
    skipped = run_cli("convert-data", str(path), "-o", str(tmp_path / "out.jsonl"), "--skip-invalid")
    assert skipped.returncode == 2 and "2 rows read; 2 dropped: not-object" in skipped.stderr


def test_typographic_punctuation_keeps_an_english_row_english():
    from dpo_cli.data.rows import guess_language

    assert guess_language("Don\u2019t panic \u2014 it\u2019s \u201cfine\u201d\u2026 \U0001f600") == "en"
    assert guess_language("\u201c天空是\u201d") == "zh" and guess_language("\u00bfQu\u00e9 tal?") == "other"


def test_map_and_recipe_columns_take_the_same_renames(tmp_path):
    """A verl-style GRPO file: the answer a reward function reads lives at reward_model.ground_truth."""
    path = _write(tmp_path / "gsm.jsonl", [{"prompt": [{"role": "user", "content": f"{i} + 1?"}],
                                           "reward_model": {"style": "rule", "ground_truth": str(i + 1)}}
                                          for i in range(3)])
    out = tmp_path / "out.jsonl"
    result = run_cli("convert-data", str(path), "--map", "answer=reward_model.ground_truth", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == ["1", "2", "3"]
    dataset, _ = load_training_data({"path": str(path), "columns": {"answer": "reward_model.ground_truth"}},
                                    kind="prompt")
    assert dataset["answer"] == ["1", "2", "3"]
    bad = run_cli("convert-data", str(path), "--map", "answer", "-o", str(out), "--force")
    assert bad.returncode == 2 and "CANONICAL=COLUMN" in bad.stderr


def test_a_row_with_trl_columns_but_wrong_values_says_what_is_wrong(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"q": "Hi", "good": {"text": "Hello"}, "bad": {"text": "Go"}}])
    result = run_cli("convert-data", str(path), "--map", "prompt=q", "--map", "chosen=good", "--map", "rejected=bad",
                     "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}:1: field 'chosen': the row has format trl's columns, but: "
                                    "expected a list of messages, found an object")
    mixed = _write(tmp_path / "mixed.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello",
                                               "rejected": "Go"}])
    result = run_cli("convert-data", str(mixed), "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2 and "field 'prompt'" in result.stderr and "prompt must be text" in result.stderr


def test_errors_under_train_name_the_recipe_keys_not_the_flags(tmp_path):
    from dpo_cli.core.errors import DataError

    path = _write(tmp_path / "qa.jsonl", [{"question": "Hi", "answer": "Hello", "lang": "en"}])
    cases = [(str(path), "name it with the source's format: (", "--format"),
             ({"path": str(path), "columns": {"prompt": "query"}}, "(named by columns: {prompt: query})", "--map"),
             ({"path": str(path), "where": "language == 'en'"}, "where: names column 'language'", "--where")]
    for source, said, flag in cases:
        with pytest.raises(DataError) as err:
            load_training_data(source)
        assert said in str(err.value) and flag not in str(err.value)
    unused = _write(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello", "rejected": "Go", "note": "x"}])
    from dpo_cli.data.load import _split_info

    for _ in range(2):  # read, then from the prepared rows: the same words
        _, _, stats = _split_info(str(unused), "preference", tmp_path / "cache")
        [(what, _, meaning, _)] = stats.findings()
        assert what == "columns not used" and "columns:" in meaning and "--" not in meaning


def _imported(tmp_path, text: str) -> tuple[dict, str]:
    from dpo_cli.recipe.yamlfile import load_yaml
    from dpo_cli.train.llamafactory import import_recipe

    (tmp_path / "lf.yaml").write_text(text)
    import_recipe(tmp_path / "lf.yaml", tmp_path / "r.yaml", force=True)
    return load_yaml(tmp_path / "r.yaml")[0], (tmp_path / "r.yaml").read_text()


def test_import_maps_llamafactory_keys_that_have_a_trl_equivalent(tmp_path):
    recipe, text = _imported(tmp_path, "stage: dpo\nmodel_name_or_path: m\ndataset: a\n"
                             "disable_gradient_checkpointing: true\nuse_reentrant_gc: false\npref_bco_weight: 0.5\n"
                             "pref_ftx: 0.2\nld_alpha: 0.5\n")
    trainer = recipe["trainer"]
    assert trainer["gradient_checkpointing"] is False
    assert trainer["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    # LLaMA-Factory: (dpo + w * bco) / (1 + w) + ftx * sft
    assert trainer["loss_type"] == ["sigmoid", "bco_pair", "sft"]
    assert trainer["loss_weights"] == pytest.approx([1 / 1.5, 0.5 / 1.5, 0.2])
    assert trainer["ld_alpha"] == 0.5 and "NOT MAPPED" not in text

    recipe, text = _imported(tmp_path, "stage: sft\nmodel_name_or_path: m\ndataset: a\nfinetuning_type: full\n"
                             "use_galore: true\ngalore_target: q_proj,v_proj\ngalore_rank: 8\ngalore_layerwise: true\n"
                             "use_dft_loss: true\nneat_packing: true\ntrain_on_prompt: true\n"
                             "disable_gradient_checkpointing: false\n")
    trainer = recipe["trainer"]
    assert trainer["optim"] == "galore_adamw_layerwise" and trainer["optim_target_modules"] == ["q_proj", "v_proj"]
    assert trainer["optim_args"] == "rank=8,update_proj_gap=200,scale=2.0,proj_type=std"
    assert trainer["loss_type"] == "dft" and trainer["packing"] is True
    assert trainer["completion_only_loss"] is False and "gradient_checkpointing" not in trainer
    assert "disable_gradient_checkpointing: false  -- " in text and "NOT MAPPED" not in text

    recipe, text = _imported(tmp_path, "stage: sft\nmodel_name_or_path: m\ndataset: a\nadditional_target: embed_tokens\n"
                             "use_apollo: true\ntrain_on_prompt: false\nmask_history: true\n")
    assert recipe["lora"]["modules_to_save"] == ["embed_tokens"]
    assert recipe["trainer"]["optim"] == "apollo_adamw" and recipe["trainer"]["optim_target_modules"] == "all-linear"
    assert recipe["trainer"]["optim_args"] == ("rank=16,update_proj_gap=200,scale=32.0,proj_type=std,proj=random,"
                                               "scale_type=channel")
    assert "#   train_on_prompt: false  -- TRL trains whole conversations unless trainer.assistant_only_loss" in text
    assert "#   mask_history: true  -- " in text


def test_dry_run_checks_the_columns_reward_functions_read(tmp_path, capsys):
    from helpers import run_cli as run_in_process

    repo = Path(__file__).resolve().parents[1]
    args = ["train", str(repo / "recipes" / "tiny" / "grpo.yaml"), f"output_dir={tmp_path / 'out'}",
            "reward.weights=null", "--dry-run"]
    code, _, err = run_in_process(capsys, *args, "reward.functions=[contains_answer]")
    assert code == 2
    assert "compares with column 'answer', which the training data does not have (it has: prompt)" in err
    user = tmp_path / "rewards.py"
    user.write_text("def exact(completions, solution, **kwargs):\n    return [1.0 for _ in completions]\n\n"
                    "def free(completions, trainer_state, log_metric=None, **kwargs):\n"
                    "    return [1.0 for _ in completions]\n")
    code, _, err = run_in_process(capsys, *args, f"reward.functions=[{user}:exact]")
    assert code == 2 and "reward function 'exact' reads column 'solution'" in err, err
    code, _, err = run_in_process(capsys, *args, f"reward.functions=[{user}:free]")
    assert code == 0, err


def test_inspect_data_and_train_count_the_same_sft_rows_cut_by_max_length(capsys):
    """Multi-turn tool-call SFT rows: a row loses every response token when its first assistant token lies past
    max_length (TRL's SFTTrainer keeps the start), not when the whole conversation is longer than max_length."""
    from transformers import AutoTokenizer

    from dpo_cli.core.builtins import resolve_builtin
    from dpo_cli.evidence.truncation import response_loss
    from helpers import run_cli as run_in_process

    path = str(FIXTURES / "llamafactory" / "glaive_toolcall_en_demo.json")
    tokenizer = AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-chat"))
    dataset, _ = load_training_data(path, "sft")
    lost = response_loss(tokenizer, dataset, 45)
    assert (lost.lost, lost.rows) == (1, 4)
    code, out, err = run_in_process(capsys, "inspect-data", path, "--tokenizer", "builtin:tiny-chat",
                                    "--max-length", "45")
    assert code == 0, err
    said = " ".join(out.split())
    assert "over --max-length 45: 4 rows (100.0%); no response token kept: 1 (25.0%); response truncated: 3" in said


def _tokenizer(template: str | None = None):
    from transformers import AutoTokenizer

    from dpo_cli.core.builtins import resolve_builtin

    tokenizer = AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-chat"))
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def test_tool_calls_schemas_and_reasoning_the_template_ignores_are_counted():
    from dpo_cli.evidence.template import TemplateDrops
    from test_data_recipes import TOOL_TEMPLATE

    glaive, _ = load_training_data(str(FIXTURES / "llamafactory" / "glaive_toolcall_en_demo.json"), "sft")
    reasoning, _ = load_training_data(str(FIXTURES / "llamafactory" / "reason_tool_use_demo_50.jsonl"), "sft")
    drops = TemplateDrops(_tokenizer())  # tiny-chat renders role and content only
    for row in [*glaive, *reasoning]:
        drops.add(row)
    assert drops.counts == {"tool_calls": 4, "reasoning_content": 2, "tools": 5}
    message = drops.message()
    assert message.startswith("the chat template leaves out what 11 turns and rows hold (4 assistant turns' "
                              "tool_calls, 2 assistant turns' reasoning_content, 5 rows' tools)"), message
    renders = TemplateDrops(_tokenizer(TOOL_TEMPLATE))  # renders tools and tool calls, not reasoning
    for row in [*glaive, *reasoning]:
        renders.add(row)
    assert renders.counts == {"reasoning_content": 2}
    pairs = TemplateDrops(_tokenizer())  # a pair's shared prompt turns count once
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": {}}}]}
    pairs.add({"prompt": [{"role": "user", "content": "a"}, call, {"role": "tool", "content": "1"},
                          {"role": "user", "content": "b"}],
               "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [call]})
    assert pairs.counts == {"tool_calls": 2}


def test_inspect_data_warns_once_about_what_the_template_ignores(capsys):
    from helpers import run_cli as run_in_process

    code, out, err = run_in_process(capsys, "inspect-data", str(FIXTURES / "llamafactory" /
                                                                  "glaive_toolcall_en_demo.json"),
                                    "--tokenizer", "builtin:tiny-chat")
    said = " ".join((out + err).split())
    assert code == 0 and said.count("the chat template leaves out") == 1
    assert "(3 assistant turns' tool_calls, 3 rows' tools)" in said


@pytest.mark.slow
def test_train_warns_once_about_what_the_template_ignores(tiny_model, write_recipe, tmp_path, capsys):
    from helpers import run_cli as run_in_process

    data = FIXTURES / "llamafactory" / "glaive_toolcall_en_demo.json"
    recipe = write_recipe(f"stage: sft\nmodel:\n  name_or_path: builtin:tiny-chat\ndata:\n  train: {data}\n"
                          f"trainer:\n  max_steps: 1\n  per_device_train_batch_size: 2\n  save_strategy: 'no'\n"
                          f"output_dir: {tmp_path / 'run'}\nplot: false\n")
    code, _, err = run_in_process(capsys, "train", str(recipe))
    said = " ".join(err.split())
    assert code == 0, err
    assert said.count("the chat template leaves out") == 1
    assert "train data: the chat template leaves out what 6 turns and rows hold (3 assistant turns' tool_calls, " \
           "3 rows' tools)" in said
