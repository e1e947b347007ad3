"""Vision-language models: builtin:tiny-vlm, its processor at --dry-run, the stages that take images, and sft, dpo and
LoRA with a merge trained on rows with images."""

from __future__ import annotations

import json
import math

import pytest

from conftest import REPO
from dpo_cli.core.errors import InputError, RecipeError
from dpo_cli.train.recipe_load import load_recipe
from helpers import run_cli

PAIRS = "builtin:demo/train.jsonl"


@pytest.fixture(scope="session")
def tiny_vlm(dpo_cli_home):
    from dpo_cli.core.builtins import ensure_tiny_vlm

    return ensure_tiny_vlm()


def _rows(kind: str, count: int = 8) -> list[dict]:
    """Rows in TRL's vision layout: a list of images and a prompt whose content parts place them."""
    from PIL import Image

    rows = []
    for i in range(count):
        colour = ("red", "blue")[i % 2]
        image = Image.new("RGB", (16 + 8 * (i % 3), 16), colour)  # sizes differ: the processor resizes
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
        right = [{"role": "assistant", "content": [{"type": "text", "text": f"It is {colour}."}]}]
        wrong = [{"role": "assistant", "content": [{"type": "text", "text": "It is green, I think."}]}]
        if kind == "preference":
            rows.append({"images": [image], "prompt": prompt, "chosen": right, "rejected": wrong})
        elif kind == "kto":  # unpaired: the right answer desirable, the wrong one not
            rows.append({"images": [image], "prompt": prompt, "completion": (right, wrong)[i % 2], "label": i % 2 == 0})
        else:
            rows.append({"images": [image], "prompt": prompt, "completion": right})
    return rows


def image_dataset(kind: str):
    """A prepared split as the data layer hands it over: ``images`` typed as a list of datasets.Image()."""
    import datasets

    return datasets.Dataset.from_list(_rows(kind)).cast_column("images", datasets.Sequence(datasets.Image()))


def _recipe(write_recipe, stage: str, out, extra: str = ""):
    return write_recipe(f"""\
stage: {stage}
model: {{name_or_path: builtin:tiny-vlm}}
data: {{train: {{path: {PAIRS}, limit: 8}}}}
trainer: {{max_steps: 2, per_device_train_batch_size: 2, learning_rate: 0.01, save_strategy: "no", logging_steps: 1,
          gradient_checkpointing: false}}
plot: false
output_dir: {out}
{extra}""")


def test_tiny_vlm_is_a_checkpoint_the_auto_classes_load(tiny_vlm):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    text = processor.apply_chat_template(_rows("sft")[0]["prompt"], add_generation_prompt=True)
    assert "<image>" in text
    batch = processor(images=[Image.new("RGB", (20, 12))], text=[text], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 16  # (32 / 8) ** 2 patches
    assert model(**batch).logits.shape[-1] == len(processor.tokenizer)


def test_dry_run_says_the_model_is_multimodal_and_plans_its_vision_tower(tiny_vlm, write_recipe, tmp_path, capsys):
    recipe = _recipe(write_recipe, "dpo", tmp_path / "out", "lora: {r: 4}\n")
    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 0, err
    assert "vision-language model (llava)" in out
    assert "16 tokens per image" in out and "CLIPImageProcessor" in out and "crop_size height=32, width=32" in out
    assert "LoRA targets: model\\.language_model\\." in out and "the language model only" in out
    assert "vision tower and projector" in out  # the policy weights row counts the tower
    assert "ref_model.precompute false" in out  # TRL cannot precompute image rows

    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run", "--json")
    plan = json.loads(out)
    assert plan["vision"]["tokens_per_image"] == 16 and plan["vision"]["vision_params"] > 0
    items = {item["what"]: item for item in plan["memory"]["items"]}
    assert "each image takes 16 of a sequence's tokens" in items["activations (estimate)"]["counted_as"]
    assert items["vision tower activations (estimate)"]["bytes"] == 0  # frozen under LoRA on the language model

    # all-linear, said by the recipe, reaches the vision tower: its activations are then counted
    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run", "--json", "lora.target_modules=all-linear")
    items = {item["what"]: item for item in json.loads(out)["memory"]["items"]}
    assert items["vision tower activations (estimate)"]["bytes"] > 0


def test_lora_targets_the_language_model_unless_the_recipe_names_targets(tiny_vlm, tiny_model):
    from dpo_cli.recipe.schema import LoraSection, ModelSection
    from dpo_cli.train.models import lora_targets, meta_model

    vlm = meta_model(ModelSection(name_or_path="builtin:tiny-vlm"))
    default = lora_targets(LoraSection(), vlm)
    import re

    linear = [name for name, m in vlm.named_modules() if type(m).__name__ == "Linear"]
    chosen = [name for name in linear if re.fullmatch(default, name)]
    assert chosen and all(".language_model." in f".{name}" for name in chosen)
    assert not any("vision_tower" in name or "projector" in name for name in chosen)
    assert lora_targets(LoraSection(target_modules="all-linear"), vlm) == "all-linear"
    assert lora_targets(LoraSection(), meta_model(ModelSection(name_or_path="builtin:tiny-chat"))) == "all-linear"


@pytest.mark.parametrize("stage", ["orpo", "reward", "simpo"])
def test_a_stage_without_an_image_path_refuses_a_vision_language_model(stage, tiny_vlm, write_recipe, tmp_path,
                                                                        capsys):
    from dpo_cli.train.stages import unavailable

    if unavailable(stage):
        pytest.skip(unavailable(stage))
    recipe = _recipe(write_recipe, stage, tmp_path / "out")
    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 2
    line = [line for line in err.splitlines() if line.strip()][-1]
    assert f"stage {stage} cannot take images" in line and "sft, dpo" in line and "Traceback" not in err


def test_image_rows_are_checked_against_the_model_and_the_settings_trl_refuses(tiny_vlm, tiny_model, write_recipe,
                                                                              tmp_path):
    from dpo_cli.train.stages import get_stage
    from dpo_cli.train.vision import check_images

    text = load_recipe(_recipe(write_recipe, "dpo", tmp_path / "o"), ["model.name_or_path=builtin:tiny-chat"])
    with pytest.raises(InputError, match="reads text only"):
        check_images(text, get_stage("dpo"), vision_model=False, data_images=True)
    check_images(text, get_stage("orpo"), vision_model=False, data_images=False)  # text on text: nothing to say

    keep_end = load_recipe(_recipe(write_recipe, "sft", tmp_path / "o"), ["trainer.truncation_mode=keep_end"])
    with pytest.raises(RecipeError, match="keep_end") as found:
        check_images(keep_end, get_stage("sft"), vision_model=True, data_images=True)
    assert found.value.field == "trainer.truncation_mode"
    check_images(keep_end, get_stage("sft"), vision_model=True, data_images=False)  # text rows: TRL allows it
    precompute = load_recipe(_recipe(write_recipe, "dpo", tmp_path / "o"), ["ref_model.precompute=true"])
    with pytest.raises(RecipeError, match="precompute"):
        check_images(precompute, get_stage("dpo"), vision_model=True, data_images=True)


def _train_on_images(recipe_file, kind: str, monkeypatch, overrides=(), eval_rows: bool = False):
    """run.train with the data layer's output stood in by a dataset with images (what the data branch of issue 20
    prepares from the layouts it reads): every other step is the real one."""
    from dpo_cli.runner.run import train
    from dpo_cli.train.stages.base import Stage

    dataset = image_dataset(kind)
    monkeypatch.setattr(Stage, "load_data", lambda self, recipe: (
        dataset, dataset if eval_rows else None, {"train": {"rows": len(dataset), "fingerprint": f"images-{kind}"}}))
    return train(load_recipe(recipe_file, list(overrides)))


def _losses(out) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [m["loss"] for m in map(json.loads, lines) if m["split"] == "train" and "loss" in m]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("stage,kind", [("sft", "sft"), ("dpo", "preference"), ("kto", "kto")])
def test_tiny_vlm_trains_on_rows_with_images(stage, kind, tiny_vlm, write_recipe, tmp_path, monkeypatch, cpu_only,
                                             capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dpo_cli.train.stages import get_stage

    if get_stage(stage).no_images() is not None:
        pytest.skip(get_stage(stage).no_images())
    out = tmp_path / "out"
    result = _train_on_images(_recipe(write_recipe, stage, out), kind, monkeypatch, eval_rows=True)
    if stage == "dpo":  # the held-out image pairs are scored with the processor, before and after
        figures = result.manifest["evaluation"]
        for key in ("reward_accuracy", "reward_margin", "logps_chosen", "kl_chosen_per_token"):
            assert math.isfinite(figures["before"][key]) and math.isfinite(figures["after"][key]), key
        assert figures["before"]["pairs"] == figures["after"]["pairs"] == 8
        assert figures["before"]["reward_margin"] == 0 and figures["after"]["kl_chosen_per_token"] > 0
        assert figures["after"]["logps_chosen"] != figures["before"]["logps_chosen"]
        assert "held-out scoring skipped" not in capsys.readouterr().err
    assert result.manifest["status"] == "completed" and result.manifest["global_step"] == 2
    losses = _losses(out)
    assert losses and all(loss == loss for loss in losses)  # logged, and not NaN
    before, after = _weights(tiny_vlm), _weights(out)
    for key in ("model.language_model.layers.0.mlp.down_proj.weight", "model.multi_modal_projector.linear_1.weight",
                "model.vision_tower.encoder.layers.0.mlp.fc1.weight"):  # full fine-tuning reaches the tower too
        assert not (before[key] == after[key]).all(), key
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "LlavaProcessor"  # saved beside the weights
    AutoModelForImageTextToText.from_pretrained(out)


@pytest.mark.slow
def test_lora_on_tiny_vlm_trains_the_language_model_and_merges(tiny_vlm, write_recipe, tmp_path, monkeypatch,
                                                               cpu_only):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dpo_cli.train.merge import merge_lora

    out = tmp_path / "out"
    result = _train_on_images(_recipe(write_recipe, "dpo", out, "lora: {r: 4, alpha: 8, dropout: 0.0}\n"),
                              "preference", monkeypatch, ["trainer.learning_rate=0.05"])
    assert result.manifest["status"] == "completed" and _losses(out)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all(".language_model." in key for key in adapter), sorted(adapter)[:3]
    assert any(not (tensor == 0).all() for key, tensor in adapter.items() if "lora_B" in key)  # B starts at zero

    merged = merge_lora(out, tmp_path / "merged")
    assert merged.within_tolerance
    base, weights = _weights(tiny_vlm), _weights(tmp_path / "merged")
    assert not (base["model.language_model.layers.0.self_attn.q_proj.weight"]
                == weights["model.language_model.layers.0.self_attn.q_proj.weight"]).all()
    assert (base["model.vision_tower.encoder.layers.0.mlp.fc1.weight"]
            == weights["model.vision_tower.encoder.layers.0.mlp.fc1.weight"]).all()
    assert type(AutoProcessor.from_pretrained(tmp_path / "merged")).__name__ == "LlavaProcessor"
    AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")


def test_the_pairs_stage_refuses_a_vision_language_model_at_dry_run_and_at_run(tiny_vlm, write_recipe, tmp_path,
                                                                              capsys):
    from dpo_cli.runner.pipeline import run_stage

    recipe = write_recipe(f"""\
stage: pairs
model: {{name_or_path: builtin:tiny-vlm}}
data: {{train: {{path: {PAIRS}, limit: 4}}}}
reward: {{functions: [{{regex: {{pattern: "^[A-Z]"}}}}]}}
sampling: {{num_samples: 2, max_new_tokens: 4}}
output_dir: {tmp_path / 'out'}
""")
    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert code == 2 and "stage pairs cannot take images" in err
    with pytest.raises(InputError, match="stage pairs cannot take images"):
        run_stage(load_recipe(recipe))
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_over_budget_plan_never_suggests_what_trl_refuses_on_image_rows(tiny_vlm, write_recipe, tmp_path, capsys):
    recipe = _recipe(write_recipe, "dpo", tmp_path / "out")
    code, out, err = run_cli(capsys, "train", str(recipe), "--dry-run", "--json", "--gpu-memory", "10MiB")
    assert code == 0, err
    fixes = [fix["change"] for fix in json.loads(out)["memory"]["fixes"]]
    assert fixes and not any("precompute" in change for change in fixes)
    items = {item["what"]: item for item in json.loads(out)["memory"]["items"]}
    assert items["vision tower activations (estimate)"]["bytes"] > 0  # full fine-tuning trains the tower


@pytest.mark.slow
def test_a_rank_other_than_0_can_build_tiny_vlm(tmp_path):
    """Under torchrun every rank may be the first to need the model: rank 1 builds it, rank 0 finds it after."""
    import os
    import subprocess
    import sys

    script = tmp_path / "build.py"
    script.write_text("import torch.distributed as dist\n"
                      "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
                      "from dpo_cli.core.builtins import ensure_tiny_vlm\n"
                      "dist.init_process_group('gloo')\n"
                      "if dist.get_rank() == 1:\n"
                      "    AutoModelForImageTextToText.from_pretrained(ensure_tiny_vlm())\n"
                      "dist.barrier()\n"
                      "AutoModelForImageTextToText.from_pretrained(ensure_tiny_vlm())\n"
                      "AutoProcessor.from_pretrained(ensure_tiny_vlm())\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPO_CLI_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    models = tmp_path / "home" / "models"
    assert [p.name for p in models.iterdir()] == ["tiny-vlm-v1"]  # one build kept, no temporary folder left
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= {
        p.name for p in (models / "tiny-vlm-v1").iterdir()}


# The layouts of issue 20's item 2, as the data branch's fixtures hold them (tests/fixtures/images): each trains
# through the real loader. Skipped where the fixtures or the loader's images column are not here yet.
IMAGE_FIXTURES = REPO / "tests" / "fixtures" / "images"
LAYOUTS = [
    ("dpo", "trl_vision.jsonl"), ("kto", "trl_vision.jsonl"), ("sft", "trl_vision_sft.jsonl"),
    ("dpo", "rlaif_v.parquet"), ("dpo", "align_anything_ti2t.jsonl"),
    ("sft", "{registry: dataset_info.json, name: mllm_demo}"),
    ("dpo", "{registry: dataset_info.json, name: mllm_dpo_demo}"),
]


@pytest.mark.slow
@pytest.mark.parametrize("stage,source", LAYOUTS, ids=[f"{stage}-{source.split('name: ')[-1].rstrip('}')}"
                                                        for stage, source in LAYOUTS])
def test_tiny_vlm_trains_from_each_image_layout(stage, source, tiny_vlm, write_recipe, tmp_path, cpu_only):
    from dpo_cli.data.load import check_data
    from dpo_cli.runner.run import train
    from dpo_cli.train.stages import get_stage
    from dpo_cli.train.vision import has_images

    source = source.replace("dataset_info.json", str(IMAGE_FIXTURES / "dataset_info.json")) if "registry" in source \
        else str(IMAGE_FIXTURES / source)
    if get_stage(stage).no_images() is not None:
        pytest.skip(get_stage(stage).no_images())
    recipe = load_recipe(_recipe(write_recipe, stage, tmp_path / "out"), [f"data.train={source}"])
    assert has_images(check_data(recipe.data, get_stage(stage).data_kind)["train"]["columns"])
    result = train(recipe)
    assert result.manifest["status"] == "completed" and _losses(tmp_path / "out")
    before, after = _weights(tiny_vlm), _weights(tmp_path / "out")
    key = "model.language_model.layers.0.mlp.down_proj.weight"
    assert not (before[key] == after[key]).all()


@pytest.mark.slow
def test_the_shipped_image_recipe_trains_and_scores_its_held_out_images(tiny_vlm, tmp_path, capsys, cpu_only):
    """recipes/tiny/vlm-dpo.yaml, the worked example: bundled image rows, LoRA on the language model, held-out
    figures before and after."""
    code, out, err = run_cli(capsys, "train", str(REPO / "recipes" / "tiny" / "vlm-dpo.yaml"),
                             f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2", "plot=false")
    assert code == 0, err
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["data"]["eval"]["rows"] == 8
    for when in ("before", "after"):
        assert math.isfinite(manifest["evaluation"][when]["reward_margin"])
    assert "held-out pairs: 8" in out


# --- online DPO on image prompts: the policy generates from each prompt's one image, the judge picks ----------------

DEMO_IMAGES = "builtin:demo/images/train.jsonl"  # TRL's vision layout, one image a row: read as prompts here


@pytest.fixture(scope="module")
def text_reward_model(tiny_model, tmp_path_factory):
    """A text-only judge: tiny-chat with a one-score head (untrained: the test needs a reward model, not a good one)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("text-rm")
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def _online(write_recipe, out, reward: str, train: str = DEMO_IMAGES):
    return _recipe(write_recipe, "online-dpo", out, f"reward: {reward}\n").read_text().replace(
        f"{{path: {PAIRS}, limit: 8}}", train)


def test_online_dpo_plans_image_prompts_and_refuses_a_row_with_two_images(tiny_vlm, text_reward_model, write_recipe,
                                                                          tmp_path, capsys):
    from dpo_cli.train.stages import get_stage

    if get_stage("online-dpo").unavailable():
        pytest.skip(get_stage("online-dpo").unavailable())
    recipe = write_recipe(_online(write_recipe, tmp_path / "out", f"{{model: {text_reward_model}}}"), "online.yaml")
    # the longest demo prompt is 1 image x 16 + 29 text tokens = 45: longer than max_length, which TRL 1.16 applies to
    # text prompts only (a dpo run would be refused here)
    code, out, err = run_cli(capsys, "train", str(recipe), "trainer.max_new_tokens=8", "trainer.max_length=40",
                             "--dry-run")
    if get_stage("online-dpo").no_images() is not None:  # TRL before 1.16: one line that names the TRL to install
        line = [line for line in err.splitlines() if line.strip()][-1]
        assert code == 2 and "stage online-dpo cannot take images" in line and "pip install 'trl>=1.16'" in line
        return
    assert code == 0, err
    assert "vision-language model (llava)" in out and "16 tokens per image" in out
    assert f"reward model judging the samples ({text_reward_model}) reads text only" in " ".join(out.split())

    # the dpo stage's fixture holds a row with two images: one line naming the file, the line and the field
    two = str(IMAGE_FIXTURES / "trl_vision.jsonl")
    code, out, err = run_cli(capsys, "train", str(recipe), f"data.train={two}", "--dry-run")
    line = [line for line in err.splitlines() if line.strip()][-1]
    assert code == 2 and "Traceback" not in err
    assert f"{two}:2: field 'images'" in line and "the row has 2 images" in line and "exactly one image" in line
    # ... or a row counted and kept aside under skip_invalid, as every bad image row is
    code, out, err = run_cli(capsys, "train", str(recipe), f"data.train={{path: {two}, skip_invalid: true}}",
                             "--dry-run")
    assert code == 0, err
    assert "train: 1 rows read and checked (dropped: image-count 1)" in out


def test_a_text_reward_model_reads_image_prompts_as_their_text(tiny_model):
    from transformers import AutoTokenizer

    from dpo_cli.train.rewards import TextPrompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = _rows("preference")[0]["prompt"]
    conversation = prompt + [{"role": "assistant", "content": "It is red."}]
    text = TextPrompts(tokenizer).apply_chat_template(conversation, tokenize=False)
    assert text == tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>What colour is it?"}, conversation[1]], tokenize=False)
    assert prompt[0]["content"][0] == {"type": "image"}  # the policy's prompt is left as it was
    wrapped = TextPrompts(tokenizer)
    wrapped.pad_token = tokenizer.eos_token  # TRL sets a missing pad token on what it is given
    assert tokenizer.pad_token == tokenizer.eos_token and wrapped(text="a b")["input_ids"] == tokenizer("a b")[
        "input_ids"]


# what each sampling stage needs beyond the shared recipe to sample two short answers per prompt
SAMPLING = {"online-dpo": ["trainer.max_new_tokens=6", "trainer.max_length=64"],
            "grpo": ["trainer.num_generations=2", "trainer.max_completion_length=6"],
            "rloo": ["trainer.num_generations=2", "trainer.max_completion_length=6"]}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(SAMPLING))
def test_sampling_stages_train_tiny_vlm_on_image_prompts(stage, tiny_vlm, text_reward_model, write_recipe, tmp_path,
                                                         capsys, cpu_only, monkeypatch):
    """The real loader reads the demo image pairs as prompts with their image; the policy samples answers to each
    prompt from its image, and a reward model (text only) and a user function that sees the image judge them.
    Online DPO gets one image per prompt (TRL's image column), GRPO and RLOO the images list."""
    from dpo_cli.runner.run import train
    from dpo_cli.train.rewards import TextPrompts
    from dpo_cli.train.stages import get_stage

    if get_stage(stage).unavailable() or get_stage(stage).no_images():
        pytest.skip(f"this TRL's {stage} takes no images")
    rendered = []  # what the reward model's chat template made of the image prompts
    render = TextPrompts.apply_chat_template
    monkeypatch.setattr(TextPrompts, "apply_chat_template",
                        lambda self, *args, **kwargs: rendered.append(render(self, *args, **kwargs)) or rendered[-1])
    # a sampled image token has no image behind it and fails the forward that scores the answer: never sampled
    from transformers import LlavaForConditionalGeneration

    suppressed, generate = [], LlavaForConditionalGeneration.generate

    def watched(self, *args, **kwargs):
        suppressed.append(list(kwargs["generation_config"].suppress_tokens or []))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "generate", watched)
    seen = tmp_path / "seen.jsonl"
    judge = tmp_path / "judge.py"
    judge.write_text("import json\n"
                     "def sees_image(prompts, completions, image=None, images=None, **kwargs):\n"
                     "    pictures = image if image is not None else [found[0] for found in images]\n"
                     f"    with open({str(seen)!r}, 'a') as f:\n"
                     "        for picture, prompt in zip(pictures, prompts, strict=True):\n"
                     "            f.write(json.dumps([list(picture.size), prompt[0]['content'][0]['type']]) + '\\n')\n"
                     "    return [1.0] * len(completions)\n", encoding="utf-8")
    out = tmp_path / "out"
    recipe = write_recipe(_online(write_recipe, out, f"{{functions: [{{reward_model: {text_reward_model}}}, "
                                                     f"{judge}:sees_image]}}").replace("online-dpo", stage),
                          "sampling.yaml")
    result = train(load_recipe(recipe, SAMPLING[stage]))
    assert result.manifest["status"] == "completed" and result.manifest["global_step"] == 2
    logs = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m["split"] == "train"]
    assert len(logs) == 2 and all(math.isfinite(m["loss"]) for m in logs)
    # every sample was judged with its prompt's picture (the demo's are 32x32) and the image part placing it
    judged = [json.loads(line) for line in seen.read_text().splitlines()]
    assert judged and judged == [[[32, 32], "image"]] * len(judged)
    assert "reads text only" in capsys.readouterr().err  # said once, at the run
    assert len(rendered) == len(judged) and all("user\n<image>" in text and "'type'" not in text for text in rendered)
    image_token = json.loads((tiny_vlm / "config.json").read_text())["image_token_index"]
    assert suppressed and all(image_token in tokens for tokens in suppressed)
    before, after = _weights(tiny_vlm), _weights(out)
    # the tower learned too: its image features went through the forward that the loss came from
    for key in ("model.language_model.layers.0.mlp.down_proj.weight",
                "model.vision_tower.encoder.layers.0.mlp.fc1.weight"):
        assert not (before[key] == after[key]).all(), key
