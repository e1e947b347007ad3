"""Data in recipes: registry sources, skip_invalid with rejects and counts in run.json, --dry-run reading every row,
the truncation warning, LLaMA-Factory YAMLs imported, and DPO, KTO and SFT runs from registry sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from dpo_cli.core.errors import RecipeError
from dpo_cli.train.recipe_load import load_recipe
from helpers import run_cli

FIXTURES = Path(__file__).parent / "fixtures"
LF = FIXTURES / "data" / "llamafactory"
REGISTRY = LF / "dataset_info.json"
LF_YAML = FIXTURES / "llamafactory_yaml"

RECIPE = """\
stage: {stage}
model:
  name_or_path: builtin:tiny-chat
data:
  train: {train}
trainer:
  max_steps: 2
  logging_steps: 1
  per_device_train_batch_size: 2
  save_strategy: "no"
{trainer}output_dir: {out}
plot: false
"""

HH_ROWS = [
    {"chosen": "\n\nHuman: Name a fruit.\n\nAssistant: An apple.", "rejected": "\n\nHuman: Name a fruit.\n\nAssistant: A rock."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "Assistant: Go away."},  # raw HH's broken rows look so
    {"chosen": "\n\nHuman: Sky colour?\n\nAssistant: Blue.", "rejected": "\n\nHuman: Sky colour?\n\nAssistant: Green."},
    {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 4"},
]


def _hh(tmp_path) -> Path:
    path = tmp_path / "harmless-base-test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HH_ROWS))
    return path


def _recipe(write_recipe, tmp_path, train: str, stage: str = "dpo", trainer: str = "", name: str = "r.yaml") -> Path:
    return write_recipe(RECIPE.format(stage=stage, train=train, trainer=trainer, out=tmp_path / "run"), name)


def test_recipe_sources_take_registry_skip_invalid_and_rejects(write_recipe, tmp_path):
    train = f"{{registry: {REGISTRY}, name: dpo_en_demo, skip_invalid: true, rejects: {tmp_path}/rejects.jsonl}}"
    recipe = load_recipe(_recipe(write_recipe, tmp_path, train))
    assert recipe.data.train == [{"registry": str(REGISTRY), "name": "dpo_en_demo", "skip_invalid": True,
                                  "rejects": f"{tmp_path}/rejects.jsonl"}]


@pytest.mark.parametrize("train, message", [
    ("{registry: r.json}", "registry and name go together: the dataset_info.json and the entry to read"),
    ("{path: a.jsonl, registry: r.json, name: x}", "a data source needs exactly one of path, registry (with name) or hub"),
    ("{path: a.jsonl, rejects: bad.jsonl}", "rejects only applies with skip_invalid: true"),
    ("{registry: r.json, name: x, format: alpaca}", "a registry source takes format and columns from its entry"),
])
def test_source_object_mistakes_name_the_line(write_recipe, tmp_path, train, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(write_recipe, tmp_path, train))
    assert str(err.value).startswith(f"{tmp_path / 'r.yaml'}:5: field 'data.train.0': {message}")


def test_skip_invalid_counts_into_run_info_and_writes_rejects(tmp_path):
    from dpo_cli.data.load import load_splits
    from dpo_cli.recipe.schema import DataSection

    rejects = tmp_path / "rejects.jsonl"
    data = DataSection(train=[{"path": str(_hh(tmp_path)), "skip_invalid": True, "rejects": str(rejects)}])
    train, _, info = load_splits(data, 42, "preference")
    assert len(train) == 2 and info["train"]["rows"] == 2
    assert info["train"]["dropped"] == {"missing-field": 1, "identical": 1}
    assert info["train"]["rejects"] == [str(rejects)]
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["check"], r["field"]) for r in lines] == [(2, "missing-field", "rejected"),
                                                                    (4, "identical", "rejected")]
    assert lines[0]["row"] == HH_ROWS[1]


def test_an_sft_stage_on_kto_data_says_what_it_leaves_out(capsys):
    from dpo_cli.data.load import load_splits
    from dpo_cli.recipe.schema import DataSection

    train, _, info = load_splits(DataSection(train=str(LF / "kto_en_demo.json")), 42, "sft")
    assert len(train) == 2 and info["train"]["left_out"] == {"undesirable": 2}
    assert capsys.readouterr().err.strip() == (
        "train data: left out: undesirable: 2 (rows labelled undesirable (label false), which supervised "
        f"fine-tuning does not imitate); first: {LF / 'kto_en_demo.json'}:2")


def test_dry_run_reads_every_row_and_reports_what_it_found(write_recipe, tmp_path, capsys):
    hh = _hh(tmp_path)
    strict = _recipe(write_recipe, tmp_path, str(hh), name="strict.yaml")
    code, _, err = run_cli(capsys, "train", str(strict), "--dry-run")
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"error: {hh}:2: field 'rejected': stage dpo reads preference pairs "
                                            "(prompt, chosen, rejected); holds only the response; a full "
                                            "conversation (or a separate 'prompt') is needed to know the prompt")
    lenient = _recipe(write_recipe, tmp_path, f"{{path: {hh}, skip_invalid: true, rejects: {tmp_path}/rej.jsonl}}",
                      name="lenient.yaml")
    code, out, err = run_cli(capsys, "train", str(lenient), "--dry-run")
    assert code == 0, err
    assert "data       train: 2 rows read and checked (dropped: missing-field 1, identical 1)" in out
    assert not (tmp_path / "rej.jsonl").exists()  # a dry run writes nothing
    # planned for a GPU, the defaults count the rows too (they used to load the data, rejects file and all)
    code, out, err = run_cli(capsys, "train", str(lenient), "--dry-run", "--gpu-memory", "80GiB")
    assert code == 0 and "ref_model.precompute true" in out, err
    assert not (tmp_path / "rej.jsonl").exists()


def test_truncation_share_is_measured_as_trl_tokenizes(tiny_model):
    from transformers import AutoTokenizer

    from dpo_cli.data.load import load_training_data
    from dpo_cli.evidence.truncation import response_loss, truncation_warning

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows, _ = load_training_data(str(LF / "dpo_en_demo.json"))
    generous = response_loss(tokenizer, rows, 100_000)
    assert generous.rows == 2 and generous.lost == 0 and generous.share == 0.0
    tight = response_loss(tokenizer, rows, 24)
    assert tight.lost == 2 and tight.share == 1.0 and tight.suggested % 64 == 0 and tight.suggested > 24

    class Args:
        max_length, truncation_mode = 24, "keep_start"

    warning = truncation_warning(tokenizer, rows, Args)
    assert warning.startswith("100% of the training rows (2 of 2 rows) lose their whole response to max_length 24")
    assert f"trainer.max_length={tight.suggested} keeps 95% of them whole" in warning
    Args.max_length = 100_000
    assert truncation_warning(tokenizer, rows, Args) is None
    sft, _ = load_training_data(str(LF / "glaive_toolcall_en_demo.json"), "sft")
    assert response_loss(tokenizer, sft, 8).lost == 4  # every first answer starts after 8 tokens


def _seed_project(tmp_path) -> Path:
    """The seed tutorial's LLaMA-Factory folder: its YAML, its dataset_info.json entry and the alpaca pairs its
    pandas script writes (json.dump with indent=4)."""
    project = tmp_path / "LLaMA-Factory"
    (project / "data").mkdir(parents=True)
    (project / "data" / "dataset_info.json").write_text(json.dumps({"dpo_convert_parquet_zh_5000": {
        "file_name": "dpo_convert_parquet_zh_5000.json", "ranking": True,
        "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}}, indent=2))
    rows = [{"instruction": f"问题 {i}", "input": "", "chosen": f"好的回答 {i}", "rejected": f"差 {i}"} for i in range(6)]
    (project / "data" / "dpo_convert_parquet_zh_5000.json").write_text(json.dumps(rows, indent=4, ensure_ascii=False))
    shutil.copy(LF_YAML / "seed_002_dpo.yaml", project / "q0_5.yaml")
    return project


def test_seed_002_yaml_imports_and_dry_runs(tmp_path, capsys, monkeypatch):
    project = _seed_project(tmp_path)
    monkeypatch.chdir(project)
    code, out, err = run_cli(capsys, "import-recipe", "q0_5.yaml", "-o", "recipe.yaml")
    assert code == 0, err
    text = (project / "recipe.yaml").read_text()
    assert text.splitlines()[0] == "# dpo-cli train recipe.yaml"
    source = (project / "q0_5.yaml").read_text().splitlines()
    for key in (line.split(":")[0] for line in source if line.strip()):  # every key has its comment
        assert f"# from {key}" in text or f"#   {key}:" in text or f"in {key}:" in text or f"; {key}:" in text, key
    assert "  beta: 0.1  # from pref_beta: 0.1" in text and "  max_length: 2048  # from cutoff_len: 2048" in text
    assert "#   fp16: true  -- mixed precision comes from the hardware" in text
    assert "#   flash_attn: auto  -- dpo-cli loads the model's default attention implementation" in text
    assert "warning: q0_5.yaml: flash_attn: auto is not mapped" in err
    recipe = load_recipe(project / "recipe.yaml")
    assert recipe.lora.r == 8 and recipe.lora.alpha == 16 and recipe.lora.dropout == 0.0
    assert recipe.trainer["learning_rate"] == 5e-05 and recipe.trainer["gradient_accumulation_steps"] == 8
    code, out, err = run_cli(capsys, "train", "recipe.yaml", "--dry-run")
    assert code == 0, err
    assert "data       train: 6 rows read and checked" in out and "dry run: no weights loaded" in out


@pytest.mark.parametrize("name, stage, trainer", [
    ("qwen3_lora_dpo", "dpo", {"beta": 0.1, "max_length": 2048, "warmup_steps": 0.1}),
    ("qwen3_lora_kto", "kto", {"beta": 0.1, "learning_rate": 5e-06}),
    ("qwen3_lora_reward", "reward", {"learning_rate": 1e-04}),
    ("qwen3_lora_sft", "sft", {"num_train_epochs": 3.0}),
])
def test_llamafactory_examples_import(tmp_path, capsys, monkeypatch, name, stage, trainer):
    shutil.copytree(LF, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "import-recipe", str(LF_YAML / f"{name}.yaml"), "-o", "r.yaml")
    assert code == 0, err
    recipe = load_recipe(tmp_path / "r.yaml", ["model.name_or_path=builtin:tiny-chat"])
    assert recipe.stage == stage and recipe.model.trust_remote_code
    assert {k: recipe.trainer[k] for k in trainer} == trainer
    assert all(source["registry"] == "data/dataset_info.json" and source["limit"] == 1000
               for source in recipe.data.train)
    code, out, err = run_cli(capsys, "train", "r.yaml", "model.name_or_path=builtin:tiny-chat", "--dry-run")
    assert code == 0, err


def test_import_maps_the_sft_term_lists_and_says_what_it_cannot_map(tmp_path, capsys):
    (tmp_path / "lf.yaml").write_text("stage: dpo\nmodel_name_or_path: m\ndataset: a,b\nlora_target: q_proj,v_proj\n"
                                      "pref_ftx: 0.5\nquantization_bit: 4\nenable_liger_kernel: true\nweird_key: 3\n")
    code, _, err = run_cli(capsys, "import-recipe", str(tmp_path / "lf.yaml"), "-o", str(tmp_path / "r.yaml"))
    assert code == 0 and "weird_key: 3 is not mapped" in err
    text = (tmp_path / "r.yaml").read_text()
    assert "#   weird_key: 3  -- no dpo-cli setting, and DPOConfig has no field of that name" in text
    assert "quantization_method" not in text  # not in the file: nothing to say about it
    from dpo_cli.recipe.yamlfile import load_yaml

    recipe, _ = load_yaml(tmp_path / "r.yaml")
    assert recipe["trainer"]["loss_type"] == ["sigmoid", "sft"] and recipe["trainer"]["loss_weights"] == [1.0, 0.5]
    assert recipe["lora"]["target_modules"] == ["q_proj", "v_proj"] and recipe["quantization"] == {"bits": 4}
    assert recipe["trainer"]["use_liger_kernel"] is True
    assert [s["name"] for s in recipe["data"]["train"]] == ["a", "b"]


@pytest.mark.parametrize("loss, extra, stage, trainer", [
    ("orpo", "", "orpo", {"beta": 0.25}),
    ("simpo", "simpo_gamma: 0.7\npref_ftx: 0.3\n", "simpo", {"beta": 0.25, "simpo_gamma": 0.7, "cpo_alpha": 0.3}),
])
def test_import_turns_orpo_and_simpo_losses_into_their_stages(tmp_path, capsys, loss, extra, stage, trainer):
    from dpo_cli.recipe.yamlfile import load_yaml

    (tmp_path / "lf.yaml").write_text(f"stage: dpo\nmodel_name_or_path: m\ndataset: a\npref_beta: 0.25\n"
                                      f"pref_loss: {loss}\nref_model: other\n{extra}")
    code, _, err = run_cli(capsys, "import-recipe", str(tmp_path / "lf.yaml"), "-o", str(tmp_path / "r.yaml"))
    assert code == 0, err
    recipe, _ = load_yaml(tmp_path / "r.yaml")
    assert recipe["stage"] == stage and "ref_model" not in recipe
    assert {k: recipe["trainer"][k] for k in trainer} == trainer
    assert f"ref_model: other  -- stage {stage} has no reference model" in (tmp_path / "r.yaml").read_text()


def test_import_says_what_replaced_kto_pair(tmp_path, capsys):
    (tmp_path / "lf.yaml").write_text("stage: dpo\nmodel_name_or_path: m\ndataset: a\npref_loss: kto_pair\n")
    code, _, _ = run_cli(capsys, "import-recipe", str(tmp_path / "lf.yaml"), "-o", str(tmp_path / "r.yaml"))
    assert code == 0
    assert "pref_loss: kto_pair  -- TRL removed kto_pair from its DPO trainer: train stage kto on unpaired rows" \
        in (tmp_path / "r.yaml").read_text()


def test_import_refuses_what_has_no_dpo_cli_stage(tmp_path, capsys):
    (tmp_path / "pt.yaml").write_text("stage: pt\nmodel_name_or_path: m\ndataset: c4_demo\n")
    code, _, err = run_cli(capsys, "import-recipe", str(tmp_path / "pt.yaml"), "-o", str(tmp_path / "r.yaml"))
    assert code == 2 and err.strip() == "error: stage: pt has no dpo-cli stage (dpo-cli runs sft, dpo, kto, rm, ppo)"


TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{%- if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>{{ call.function | tojson }}"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("stage, train", [
    ("sft", "llamafactory/glaive_toolcall_en_demo.json"),
    ("dpo", "public/openai_dpo.jsonl"),
])
def test_tools_and_tool_calls_reach_trls_tokenization(tiny_model, write_recipe, tmp_path, stage, train):
    """TRL's SFT and DPO trainers render the tools column and the tool calls through the chat template."""
    from transformers import AutoTokenizer

    from helpers import build_trainer

    (tmp_path / "template.jinja").write_text(TOOL_TEMPLATE)
    path = _recipe(write_recipe, tmp_path, str(FIXTURES / "data" / train), stage=stage)
    recipe = load_recipe(path, [f"model.chat_template={tmp_path / 'template.jinja'}"])
    trainer = build_trainer(recipe)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = trainer.train_dataset
    texts = [tokenizer.decode(row["input_ids"] if stage == "sft" else row["prompt_ids"] + row["chosen_ids"])
             for row in rows]
    name = "calculate_age" if stage == "sft" else "get_current_weather"
    assert any(f'Tools: [{{"type": "function", "function": {{"name": "{name}"' in t for t in texts), texts[0]
    assert any(f'<tool_call>{{"name": "{name}", "arguments": {{' in t for t in texts)


@pytest.mark.slow
@pytest.mark.parametrize("stage, names, trainer", [
    ("dpo", ["dpo_en_demo", "dpo_zh_demo"], "  max_length: 70\n"),
    ("kto", ["kto_en_demo"], ""),
    ("sft", ["glaive_toolcall_en_demo", "alpaca_en_demo", "identity"], ""),
])
def test_training_from_registry_sources(tiny_model, write_recipe, tmp_path, capsys, stage, names, trainer):
    from dpo_cli.runner.run import train

    (tmp_path / "template.jinja").write_text(TOOL_TEMPLATE)
    sources = "[" + ", ".join(f"{{registry: {REGISTRY}, name: {n}}}" for n in names) + "]"
    recipe = load_recipe(_recipe(write_recipe, tmp_path, sources, stage=stage, trainer=trainer),
                         [f"model.chat_template={tmp_path / 'template.jinja'}"])
    result = train(recipe)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert result.manifest["status"] == manifest["status"] == "completed" and manifest["global_step"] == 2
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logs if m["split"] == "train"] == [1, 2]
    assert all(isinstance(m["loss"], float) for m in logs if m["split"] == "train")
    data = manifest["data"]["train"]
    assert data["files"] == [{"registry": str(REGISTRY), "name": n} for n in names]
    err = capsys.readouterr().err
    if stage == "dpo":  # two pairs differ only after 70 tokens (TRL leaves them out; the others train)
        assert data["rows"] == 4 and "50% of the training rows (2 of 4 rows) lose their whole response" in err
    if stage == "kto":
        assert data["rows"] == 4
    if stage == "sft":
        assert data["rows"] == 4 + 2 + 2


@pytest.mark.slow
def test_raw_hh_rlhf_trains_with_skip_invalid(tiny_model, write_recipe, tmp_path):
    from dpo_cli.runner.run import train

    train_source = f"{{path: {_hh(tmp_path)}, skip_invalid: true, rejects: {tmp_path}/rejects.jsonl}}"
    train(load_recipe(_recipe(write_recipe, tmp_path, train_source)))
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["data"]["train"]["dropped"] == {"missing-field": 1, "identical": 1}
    assert manifest["data"]["train"]["rows"] == 2
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 2


def test_gpu_recipe_dry_run_reads_its_data(capsys):
    path = REPO / "recipes" / "qwen2.5-0.5b" / "dpo.yaml"
    code, _, err = run_cli(capsys, "train", str(path), "--dry-run")
    assert code == 2 and err.strip().splitlines()[-1] == "error: data/train.jsonl: data file not found"


def test_truncation_measurement_is_kept_beside_the_prepared_rows(tiny_model, tmp_path, monkeypatch):
    """A sweep's next point reads the measurement instead of every page of the rows; another tokenizer, other rows
    or a damaged record measure again."""
    from transformers import AutoTokenizer

    from dpo_cli.data.load import load_training_data
    from dpo_cli.evidence import truncation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows, _ = load_training_data(str(LF / "dpo_en_demo.json"), cache_dir=tmp_path)
    first = truncation.response_loss(tokenizer, rows, 24)
    [record] = (tmp_path).glob("*/signals/*.json")

    measured = []
    monkeypatch.setattr(truncation, "_measure", lambda *a: measured.append(a) or [(99, 100)] * 2)
    again, _ = load_training_data(str(LF / "dpo_en_demo.json"), cache_dir=tmp_path)
    assert truncation.response_loss(tokenizer, again, 24) == first and not measured

    other = AutoTokenizer.from_pretrained(tiny_model)
    other.chat_template = other.chat_template + " "
    assert truncation.response_loss(other, again, 24).suggested == 128 and len(measured) == 1
    assert truncation.response_loss(tokenizer, again.select([0]), 24).rows == 2 and len(measured) == 2
    record.write_text("{not json")
    assert truncation.response_loss(tokenizer, again, 24).lost == 2 and len(measured) == 3
    assert len(list(tmp_path.glob("*/signals/*.json"))) == 3
