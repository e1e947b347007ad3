"""Evidence on image rows (issue 20, item 4): held-out figures scored with the processor, `dpo-cli eval` on a
vision-language run, `compare` showing each prompt's image (its path in the terminal, a thumbnail in the HTML
report), and the --dry-run check of trainer.max_length against the image tokens of the prompts."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil

import pytest

from conftest import REPO
from dpo_cli.core.errors import DataError, InputError
from helpers import run_cli

FIXTURES = REPO / "tests" / "fixtures" / "images"


@pytest.fixture(scope="session")
def tiny_vlm(dpo_cli_home):
    from dpo_cli.core.builtins import ensure_tiny_vlm

    return ensure_tiny_vlm()


def _pairs(colours, answers=None):
    """Image pairs in the canonical layout (an images column typed as datasets keeps it): one solid-colour image and
    the same question per row, the answer naming the colour (or ``answers``) chosen over a wrong one."""
    import datasets
    from PIL import Image

    rows = []
    for i, colour in enumerate(colours):
        answer = answers[i] if answers else f"It is {colour}."
        rows.append({"images": [Image.new("RGB", (16, 16), colour)],
                     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
                     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "It is green."}]}]})
    return datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))


def _model_and_processor(path):
    from dpo_cli.recipe.schema import ModelSection
    from dpo_cli.train.models import load_causal_lm, load_processing_class

    section = ModelSection(name_or_path=str(path))
    return load_causal_lm(section), load_processing_class(section)


def test_image_pairs_are_scored_with_their_images(tiny_vlm):
    """The same answers under a different image score differently (the image reaches the forward); a batch scores
    each pair as that pair alone does (chosen and rejected halves kept apart); a model without a processor is told
    why it cannot score image pairs."""
    import torch

    from dpo_cli.train.models import text_tokenizer
    from dpo_cli.train.scoring import Truncation, kl_on_chosen, score_pairs

    model, processor = _model_and_processor(tiny_vlm)
    same_answer = _pairs(["red", "blue", "white"], answers=["It is red."] * 3)
    # batch_size counts sequences, as for text pairs: 6 is the three pairs' chosen and rejected in one batch
    together = score_pairs(model, processor, same_answer, truncation=Truncation(1024), batch_size=6)
    assert len(together.chosen) == 3 and together.dropped == 0
    assert together.chosen[0] != together.chosen[1] and together.chosen[1] != together.chosen[2]
    assert together.rejected[0] != together.rejected[1]
    tokens = together.chosen_tokens.tolist()
    assert tokens[0] > 0 and tokens == [tokens[0]] * 3  # the same answer: the same response tokens
    for i in range(3):
        alone = score_pairs(model, processor, same_answer.select([i]), truncation=Truncation(1024), batch_size=1)
        torch.testing.assert_close(alone.chosen, together.chosen[i:i + 1], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(alone.rejected, together.rejected[i:i + 1], atol=1e-4, rtol=1e-5)

    assert kl_on_chosen(model, model, processor, same_answer, batch_size=2) == {
        "kl_chosen_per_token": 0.0, "kl_chosen_per_sequence": 0.0}
    with pytest.raises(InputError, match="scoring them needs the model's processor"):
        score_pairs(model, text_tokenizer(processor), same_answer)


def test_prompts_with_images_are_read_for_compare_and_refused_elsewhere(tmp_path):
    from dpo_cli.evidence.compare import ImagePrompt, image_lines, read_prompts, shown_image

    shutil.copytree(FIXTURES / "pics", tmp_path / "pics")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "What colour?", "images": ["pics/red.png"]}) + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": [{"type": "text", "text": "Two: "}, {"type": "image"},
                                                                {"type": "image"}]}],
                      "images": ["pics/red.png", "pics/blue.png"]}) + "\n"
        + json.dumps({"prompt": "No picture."}) + "\n")
    first, second, third = read_prompts(prompts, 3, images=True)
    assert isinstance(first, ImagePrompt) and first.images == [{"bytes": None, "path": str(tmp_path / "pics/red.png")}]
    assert first.prompt[0]["content"][0] == {"type": "image"}  # a text prompt gets its image first, as TRL does
    assert len(second.images) == 2 and third == "No picture."
    shown = shown_image(second.images[1])
    assert shown["source"] == str(tmp_path / "pics/blue.png") and shown["size"] == [16, 8]
    assert shown["thumbnail"].startswith("data:image/png;base64,")
    assert image_lines({"images": [shown]}) == [f"image 1: {tmp_path / 'pics/blue.png'} (16x8)"]

    with pytest.raises(DataError, match=r"prompts\.jsonl:1: .*images.*only dpo-cli compare reads prompts with images"):
        read_prompts(prompts, 3)  # the judge's prompts: text only, said rather than the images dropped
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "no part"}], "images": ["pics/red.png"]}))
    with pytest.raises(DataError, match=r"prompts\.jsonl:1: .*prompt.*1 image\(s\) but 0"):
        read_prompts(prompts, 1, images=True)
    prompts.write_text(json.dumps({"prompt": "Where?", "images": ["pics/gone.png"]}))
    with pytest.raises(DataError, match=r"prompts\.jsonl:1: .*images\[0\].*image file not found"):
        read_prompts(prompts, 1, images=True)


def _vlm_recipe(write_recipe, out, max_length: int, extra: str = ""):
    return write_recipe(f"""\
stage: dpo
model: {{name_or_path: builtin:tiny-vlm}}
data: {{train: {FIXTURES / 'trl_vision.jsonl'}, eval: {FIXTURES / 'trl_vision.jsonl'}}}
trainer: {{max_steps: 3, per_device_train_batch_size: 2, per_device_eval_batch_size: 2, learning_rate: 0.05,
          max_length: {max_length}, save_strategy: "no", logging_steps: 1, gradient_checkpointing: false}}
plot: false
output_dir: {out}
{extra}""")


def test_dry_run_says_when_max_length_cuts_the_image_tokens_of_a_prompt(tiny_vlm, write_recipe, tmp_path, capsys):
    """trl_vision.jsonl's second row has two images (16 tokens each for tiny-vlm) and 21 text tokens in its prompt:
    53 tokens, which TRL's collator would cut at max_length 40 (and the model's forward then fails)."""
    code, _, err = run_cli(capsys, "train", str(_vlm_recipe(write_recipe, tmp_path / "out", 40)), "--dry-run")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "trainer.max_length" in line and "40 is shorter than the prompts of 1 of 2 image rows" in line
    assert "2 images x 16 + 21 text tokens = 53" in line and "at least 53" in line
    code, _, err = run_cli(capsys, "train", str(_vlm_recipe(write_recipe, tmp_path / "out", 53)), "--dry-run")
    assert code == 0, err  # the longest prompt fits exactly


def test_the_dry_run_measure_matches_what_trls_collator_makes(tiny_vlm):
    """The dry run's count (text tokens + images x tokens per image) is the prompt length TRL's vision collator
    builds with the processor, on each fixture row."""
    from dpo_cli.data.load import load_training_data
    from dpo_cli.train.trl_compat import vision_pair_batches
    from dpo_cli.train.vision import PromptImageTokens, _tokens_per_image

    _, processor = _model_and_processor(tiny_vlm)
    rows, _ = load_training_data([str(FIXTURES / "trl_vision.jsonl")], "preference")
    measure = PromptImageTokens(processor)
    for row in rows:
        measure(row)
    per_image, _ = _tokens_per_image(processor)
    assert per_image == 16 and measure.images == [1, 2]
    for i in range(len(rows)):
        _, completion = next(vision_pair_batches(processor, rows.select([i]), max_length=None, batch_size=1))
        assert measure.text[i] + measure.images[i] * per_image == int((completion[0] == 0).sum())


@pytest.mark.slow
def test_a_vlm_run_reports_held_out_figures_and_eval_compare_and_report_show_the_images(
        tiny_vlm, write_recipe, tmp_path, capsys, cpu_only, monkeypatch):
    """A dpo run on tiny-vlm with image eval rows: held-out accuracy, margins and KL before and after in run.json
    (finite, from image-conditioned scores); `dpo-cli eval RUN` scores the same pairs with the processor; `compare`
    puts each image's path in the terminal and compare.md and a thumbnail in the HTML report."""
    from PIL import Image

    from dpo_cli.core import console

    out = tmp_path / "out"
    recipe = _vlm_recipe(write_recipe, out, 128)
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 0, err
    # the rows are prepared now: the dry run measures them from the prepared dataset, images left undecoded
    code, _, err = run_cli(capsys, "train", str(recipe), "trainer.max_length=40", "--dry-run")
    assert code == 2 and "2 images x 16 + 21 text tokens = 53" in err
    manifest = json.loads((out / "run.json").read_text())
    before, after = manifest["evaluation"]["before"], manifest["evaluation"]["after"]
    for figures in (before, after):
        assert figures["pairs"] == 2
        for key in ("reward_accuracy", "reward_margin", "logprob_accuracy", "logps_chosen", "logps_rejected",
                    "kl_chosen_per_token", "kl_chosen_per_sequence"):
            assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    assert before["reward_margin"] == 0 and before["kl_chosen_per_token"] == 0
    assert after["kl_chosen_per_token"] > 0 and after["logps_chosen"] != before["logps_chosen"]

    code, stdout, err = run_cli(capsys, "eval", str(out), "--json")
    assert code == 0, err
    evaluated = json.loads(stdout)["metrics"]
    assert evaluated["pairs"] == 2
    for key in ("reward_accuracy", "reward_margin", "kl_chosen_per_token"):  # the run's figures, measured again
        assert evaluated[key] == pytest.approx(after[key], abs=1e-3), key

    monkeypatch.setattr(console.stdout, "width", 1000)  # a terminal wide enough that no path wraps in the table
    code, stdout, err = run_cli(capsys, "compare", "--tuned", str(out), "--data", str(FIXTURES / "trl_vision.jsonl"),
                                "-n", "2", "--max-new-tokens", "4")
    assert code == 0, err
    red, blue = FIXTURES / "pics" / "red.png", FIXTURES / "pics" / "blue.png"
    assert f"image 1: {red} (16x16)" in stdout and f"image 2: {blue} (16x8)" in stdout
    assert f"- image 2: {blue} (16x8)" in (out / "compare.md").read_text()
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [len(r["images"]) for r in rows] == [1, 2] and all(r["tuned_greedy"] is not None for r in rows)

    code, _, err = run_cli(capsys, "report", str(out))
    assert code == 0, err
    html = (out / "report.html").read_text()
    section = html[html.index('<section id="generations">'):]
    thumbnails = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">', section)
    assert len(thumbnails) == 3 and thumbnails[0][1] == str(red)
    with Image.open(io.BytesIO(base64.b64decode(thumbnails[0][0]))) as thumbnail:
        assert thumbnail.size == (16, 16) and thumbnail.getpixel((8, 8))[:3] == (255, 0, 0)


def test_the_judge_refuses_prompts_with_images_rather_than_judging_them_without():
    from dpo_cli.evidence.judge import _data_prompts

    source = str(FIXTURES / "trl_vision.jsonl")
    with pytest.raises(InputError, match="have images, and the judged win rate reads text prompts only"):
        _data_prompts([source], 2, source)


@pytest.mark.slow
def test_a_lora_vlm_run_is_scored_against_its_disabled_adapter_in_the_run_and_by_eval(tiny_vlm, write_recipe,
                                                                                       tmp_path, capsys, cpu_only):
    """LoRA on tiny-vlm: the reference is the policy with its adapter off (KL 0 before, above 0 after), and
    `dpo-cli eval RUN` loads the adapter onto the vision-language base (peft's auto class would load it as a causal
    LM, which it is not) and measures the run's figures again."""
    out = tmp_path / "out"
    recipe = _vlm_recipe(write_recipe, out, 128, "lora: {r: 4, alpha: 8, dropout: 0.0}\n")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 0, err
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    figures = json.loads((out / "run.json").read_text())["evaluation"]
    assert figures["before"]["kl_chosen_per_token"] == 0 and figures["after"]["kl_chosen_per_token"] > 0
    code, stdout, err = run_cli(capsys, "eval", str(out), "--json")
    assert code == 0, err
    evaluated = json.loads(stdout)["metrics"]
    for key in ("reward_margin", "logps_chosen", "kl_chosen_per_token"):
        assert evaluated[key] == pytest.approx(figures["after"][key], abs=1e-3), key
