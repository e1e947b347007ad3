"""Rows with images: each public layout to TRL's vision rows, bad images as row errors, convert-data's paths,
inspect-data's counts and the prepared cache's Image column."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from dpo_cli.core.errors import DataError
from dpo_cli.data.convert import ConvertOptions, convert
from dpo_cli.data.inspection import inspect
from dpo_cli.data.rows import RowPipeline, Source
from dpo_cli.data.targets import KINDS, TARGETS
from test_data_convert import run_cli as run_child

IMAGES = Path(__file__).parent / "fixtures" / "images"
RED, BLUE = str(IMAGES / "pics" / "red.png"), str(IMAGES / "pics" / "blue.png")
REGISTRY = str(IMAGES / "dataset_info.json")


def _png(color, size=(8, 8)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def user(*parts):
    return {"role": "user", "content": [{"type": "image"} if p is None else {"type": "text", "text": p}
                                        for p in parts]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def path(p):
    return {"bytes": None, "path": p}


def data(b):
    return {"bytes": b, "path": None}


GREEN = _png((0, 255, 0))

# name -> (source, data kind, detected format, the exact canonical rows)
LAYOUTS = {
    "trl-vision": (str(IMAGES / "trl_vision.jsonl"), "preference", "trl", [
        {"prompt": [user(None, "What color is it?")], "chosen": [assistant("Red.")],
         "rejected": [assistant("Green.")], "images": [path(RED)]},
        {"prompt": [user("Compare ", None, " and ", None)], "chosen": [assistant("Red, then blue.")],
         "rejected": [assistant("Both blue.")], "images": [path(RED), path(BLUE)]}]),
    "rlaif-v": (str(IMAGES / "rlaif_v.parquet"), "preference", "rlaif-v", [
        {"prompt": [user(None, "What color is the square?")], "chosen": [assistant("The square is red.")],
         "rejected": [assistant("The square is blue.")], "images": [data(Path(RED).read_bytes())]},
        {"prompt": [user(None, "Is the square green?")], "chosen": [assistant("Yes, it is green.")],
         "rejected": [assistant("No, it is purple.")], "images": [data(GREEN)]}]),
    "align-anything-ti2t": (str(IMAGES / "align_anything_ti2t.jsonl"), "preference", "align-anything", [
        {"prompt": [user(None, "What shape is shown?")], "chosen": [assistant("A green square.")],
         "rejected": [assistant("A circle.")], "images": [data(GREEN)]}]),
    "llamafactory-mllm-dpo": ({"registry": REGISTRY, "name": "mllm_dpo_demo"}, "preference", "sharegpt", [
        {"prompt": [user(None, "What is in the picture?")], "chosen": [assistant("A blue rectangle.")],
         "rejected": [assistant("A cat.")], "images": [path(BLUE)]}]),
    "llamafactory-mllm-sft": ({"registry": REGISTRY, "name": "mllm_demo"}, "sft", "sharegpt", [
        {"messages": [user(None, "Who are they?"), assistant("Two coloured squares."), user("Which is bigger?"),
                      assistant("The red one.")], "images": [path(RED)]}]),
    "llamafactory-mllm-file": (str(IMAGES / "mllm_demo.json"), "sft", "conversation", [
        {"messages": [user(None, "Who are they?"), assistant("Two coloured squares."), user("Which is bigger?"),
                      assistant("The red one.")], "images": [path(RED)]}]),
    "trl-vision-sft": (str(IMAGES / "trl_vision_sft.jsonl"), "sft", "conversation", [
        {"messages": [user(None, "Describe it."), assistant("A blue rectangle.")], "images": [path(BLUE)]}]),
}


def _rows(source, kind="preference", **pipeline):
    pipeline = RowPipeline(KINDS[kind], **pipeline)
    return [row for _, row in pipeline.rows(Source.of(source))], pipeline


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_image_layout_reads_to_trl_vision_rows(name):
    source, kind, fmt, expected = LAYOUTS[name]
    rows, pipeline = _rows(source, kind)
    assert rows == expected
    assert list(pipeline.stats.formats.values()) == [fmt]


def test_align_anything_better_response_id_and_a_placed_image(tmp_path):
    """better_response_id names the better response as overall_response does; a question that places its image
    with <image> keeps it there."""
    (tmp_path / "a.png").write_bytes(GREEN)
    row = {"question": "Look: <image> What is it?", "image": "a.png", "response_1": "A square.",
           "response_2": "Nothing.", "better_response_id": 1}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    rows, _ = _rows(str(tmp_path / "d.jsonl"))
    assert rows == [{"prompt": [user("Look: ", None, " What is it?")], "chosen": [assistant("A square.")],
                     "rejected": [assistant("Nothing.")], "images": [path(str(tmp_path / "a.png"))]}]


def test_text_rows_are_unchanged_and_image_parts_without_images_still_refused(tmp_path):
    """Rows without an images column read as before: an image part there has no image to stand for."""
    row = {"prompt": [user(None, "Q")], "chosen": [assistant("A")], "rejected": [assistant("B")]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        _rows(str(tmp_path / "d.jsonl"))
    assert err.value.check == "non-text" and "images column" in str(err.value)


def _bad(tmp_path, images, prompt=None, chosen="A"):
    (tmp_path / "pics").mkdir(exist_ok=True)
    (tmp_path / "pics" / "ok.png").write_bytes(GREEN)
    (tmp_path / "pics" / "broken.png").write_bytes(b"\x89PNG but not really")
    good = {"images": ["pics/ok.png"], "prompt": [user(None, "Q?")], "chosen": [assistant("A")],
            "rejected": [assistant("B")]}
    bad = {"images": images, "prompt": prompt or [user(None, "Q?")], "chosen": [assistant(chosen)],
           "rejected": [assistant("B")]}
    file = tmp_path / "d.jsonl"
    file.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    return file


BAD = {
    "missing file": (["pics/gone.png"], None, "A", "bad-image", "images[0]", "image file not found: {tmp}/pics/gone.png"),
    "undecodable file": (["pics/broken.png"], None, "A", "bad-image", "images[0]", "not a readable image"),
    "undecodable data URI": (["data:image/png;base64," + base64.b64encode(b"garbage").decode()], None, "A",
                             "bad-image", "images[0]", "not a readable image: no image format"),
    "URL": (["https://example.com/cat.png"], None, "A", "bad-image", "images[0]",
            "is a URL (https://example.com/cat.png); dpo-cli reads local images only"),
    "more images than placeholders": (["pics/ok.png", "pics/ok.png"], None, "A", "image-count", "images",
                                      "the row has 2 images but 1 <image> placeholder"),
    "placeholder without image": ([], None, "A", "image-count", "images",
                                  "the row has 0 images but 1 <image> placeholder"),
    "placeholder in a response": (["pics/ok.png"], [user("Q?")], "<image>A", "image-count", "images",
                                  "an <image> placeholder in an assistant turn"),
    "inline image part": (["pics/ok.png"], [{"role": "user", "content": [{"type": "image", "image": "x.png"},
                                                                         {"type": "text", "text": "Q?"}]}],
                          "A", "bad-image", "prompt[0].content[0]", "an image part holding its image"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_image_row_names_file_line_and_field(tmp_path, name):
    images, prompt, chosen, check, field, reason = BAD[name]
    file = _bad(tmp_path, images, prompt, chosen)
    with pytest.raises(DataError) as err:
        _rows(str(file))
    assert (err.value.check, err.value.line, err.value.field) == (check, 2, field)
    assert str(err.value).startswith(f"{file}:2: field '{field}': {reason.format(tmp=tmp_path)}")


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_image_rows_are_counted_and_kept_aside_under_skip_invalid(tmp_path, name):
    images, prompt, chosen, check, field, _ = BAD[name]
    file = _bad(tmp_path, images, prompt, chosen)
    summary = convert(ConvertOptions(inputs=[str(file)], output=tmp_path / "out.jsonl", skip_invalid=True,
                                     rejects=tmp_path / "rejects.jsonl"))
    assert summary.written == 1 and summary.stats.dropped == {check: 1}
    rejected = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["check"], r["field"]) for r in rejected] == [(2, check, field)]
    assert rejected[0]["row"]["images"] == images  # the row as it was, to fix and feed again


def test_the_cli_exits_2_with_one_line_and_no_heavy_imports(tmp_path):
    file = _bad(tmp_path, ["pics/gone.png"])
    done = run_child("convert-data", str(file), "-o", str(tmp_path / "out.jsonl"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert lines[0] == f"error: {file}:2: field 'images[0]': image file not found: {tmp_path}/pics/gone.png"
    assert lines[-1] == "IMPORTED []" and not (tmp_path / "out.jsonl").exists()
    done = run_child("inspect-data", str(file))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == "IMPORTED []"  # a row fails a check
    assert "image files missing" in done.stdout


def test_a_training_source_keeps_bad_image_rows_aside(tmp_path):
    from dpo_cli.data.load import load_training_data

    file = _bad(tmp_path, ["pics/broken.png"])
    source = {"path": str(file), "skip_invalid": True, "rejects": str(tmp_path / "rejects.jsonl")}
    dataset, _ = load_training_data([source], cache_dir=tmp_path / "cache")
    assert len(dataset) == 1
    assert json.loads((tmp_path / "rejects.jsonl").read_text())["check"] == "bad-image"


def test_rejected_parquet_image_bytes_are_kept_as_a_data_uri_that_reads_back(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"image": {"bytes": GREEN, "path": None}, "question": "Q?", "chosen": "A", "rejected": "A"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    convert(ConvertOptions(inputs=[str(tmp_path / "d.parquet")], output=tmp_path / "o.jsonl", skip_invalid=True,
                           rejects=tmp_path / "r.jsonl", allow_empty=True))
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["check"] == "identical"
    assert base64.b64decode(record["row"]["image"]["bytes"].split(",", 1)[1]) == GREEN


def test_convert_data_rewrites_image_paths_relative_to_the_output_and_copies_nothing(tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(IMAGES, data_dir)
    out = tmp_path / "elsewhere" / "deep" / "out.jsonl"
    out.parent.mkdir(parents=True)
    summary = convert(ConvertOptions(inputs=[str(data_dir / "trl_vision.jsonl")], output=out))
    assert summary.written == 2 and os.listdir(out.parent) == ["out.jsonl"]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[1]["images"] == ["../../data/pics/red.png", "../../data/pics/blue.png"]
    assert all((out.parent / p).resolve().is_file() for row in written for p in row["images"])
    # read back, the output is the same canonical rows (paths made absolute again)
    again, _ = _rows(str(out))
    original, _ = _rows(str(data_dir / "trl_vision.jsonl"))
    assert again == original


def test_convert_data_embeds_bytes_as_data_uris_and_writes_llamafactory_sharegpt(tmp_path):
    out = tmp_path / "rlaif.jsonl"
    convert(ConvertOptions(inputs=[str(IMAGES / "rlaif_v.parquet")], output=out))
    first = json.loads(out.read_text().splitlines()[0])
    assert first["images"][0].startswith("data:image/png;base64,")
    assert _rows(str(out))[0] == _rows(str(IMAGES / "rlaif_v.parquet"))[0]
    lf = tmp_path / "lf.json"
    convert(ConvertOptions(inputs=[str(IMAGES / "trl_vision.jsonl")], output=lf, to="sharegpt"))
    row = json.loads(lf.read_text())[1]
    assert row["conversations"] == [{"from": "human", "value": "Compare <image> and <image>"}]
    assert row["images"] == [os.path.relpath(RED, tmp_path), os.path.relpath(BLUE, tmp_path)]
    assert _rows(str(lf))[0] == _rows(str(IMAGES / "trl_vision.jsonl"))[0]


def test_convert_data_refuses_images_in_text_only_outputs(tmp_path):
    with pytest.raises(DataError) as err:
        convert(ConvertOptions(inputs=[str(IMAGES / "trl_vision.jsonl")], output=tmp_path / "o.jsonl", to="text"))
    assert err.value.field == "images" and "plain text has no place for images" in str(err.value)


def test_inspect_data_counts_images(tmp_path):
    file = _bad(tmp_path, ["pics/gone.png"])
    with open(file, "a") as f:
        for images in (["pics/broken.png"], [str(IMAGES / "pics" / "blue.png"), "pics/ok.png"]):
            prompt = [user(*([None] * len(images)), "Q?")]
            f.write(json.dumps({"images": images, "prompt": prompt, "chosen": [assistant("A")],
                                "rejected": [assistant("B")]}) + "\n")
    report = inspect([str(file)])
    counts = report.images
    assert (counts.rows, dict(counts.per_row), counts.missing, counts.unreadable) == (2, {1: 1, 2: 1}, 1, 1)
    assert sorted(zip(counts.widths, counts.heights)) == [(8, 8), (8, 8), (16, 8)]
    assert report.char_lengths["prompt"].tolist() == [2, 2]  # "Q?": text only, an image is not characters


def test_prepared_rows_hold_an_image_column_and_a_changed_image_is_prepared_again(tmp_path):
    from datasets import Image

    from dpo_cli.data.load import load_training_data

    data_dir = tmp_path / "data"
    shutil.copytree(IMAGES, data_dir)
    cache = tmp_path / "cache"
    dataset, fingerprint = load_training_data(str(data_dir / "trl_vision.jsonl"), cache_dir=cache)
    assert isinstance(dataset.features["images"].feature, Image)
    assert dataset.data.column("images").type.value_type.field("path").type == "string"
    first = dataset[1]["images"]
    assert [im.size for im in first] == [(16, 16), (16, 8)] and first[0].getpixel((0, 0)) == (255, 0, 0)
    assert dataset[0]["prompt"][0]["content"][0]["type"] == "image"
    folder, = [p for p in cache.iterdir() if not p.name.startswith(".")]
    stamp = (folder / "rows.arrow").stat().st_mtime_ns
    _, again = load_training_data(str(data_dir / "trl_vision.jsonl"), cache_dir=cache)
    assert again == fingerprint and (folder / "rows.arrow").stat().st_mtime_ns == stamp  # reused, not rebuilt

    (data_dir / "pics" / "red.png").write_bytes(_png((1, 2, 3), (16, 16)))
    changed, changed_fingerprint = load_training_data(str(data_dir / "trl_vision.jsonl"), cache_dir=cache)
    assert changed_fingerprint != fingerprint and changed[0]["images"][0].getpixel((0, 0)) == (1, 2, 3)
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [folder.name]  # prepared again in its place, nothing stale left


def test_prepared_sft_rows_keep_their_images(tmp_path):
    from dpo_cli.data.load import load_training_data

    dataset, _ = load_training_data({"registry": REGISTRY, "name": "mllm_demo"}, kind="sft", cache_dir=tmp_path)
    assert dataset.column_names == ["messages", "images"] and dataset[0]["images"][0].size == (16, 16)
    pairs, _ = load_training_data(str(IMAGES / "rlaif_v.parquet"), kind="kto", cache_dir=tmp_path)
    assert len(pairs) == 4 and pairs[1]["label"] is False and pairs[1]["images"][0].size == (16, 16)


def test_prompt_rows_with_one_image_each_hold_it_in_an_image_column(tmp_path):
    """The prompts of online DPO (TRL reads one image per prompt from an ``image`` column): a file image and an
    embedded one, prepared as one datasets.Image() each and read back; a changed image file is prepared again."""
    from datasets import Image

    from dpo_cli.data.load import load_training_data

    rows = _rows(str(IMAGES / "rlaif_v.parquet"), "prompt-one-image")[0]
    assert rows[0] == {"prompt": [user(None, "What color is the square?")], "image": data(Path(RED).read_bytes())}
    data_dir = tmp_path / "data"
    shutil.copytree(IMAGES, data_dir)
    source = {"registry": str(data_dir / "dataset_info.json"), "name": "mllm_dpo_demo"}  # a file image
    fingerprints = []
    for where in (source, str(IMAGES / "rlaif_v.parquet")):
        dataset, fingerprint = load_training_data(where, "prompt-one-image", cache_dir=tmp_path / "cache")
        fingerprints.append(fingerprint)
        assert dataset.column_names == ["prompt", "image"] and isinstance(dataset.features["image"], Image)
        assert dataset[0]["image"].size in ((16, 8), (16, 16))  # blue, red
        assert dataset[0]["prompt"][0]["content"][0]["type"] == "image"
        assert load_training_data(where, "prompt-one-image", cache_dir=tmp_path / "cache")[1] == fingerprint
    (data_dir / "pics" / "blue.png").write_bytes(_png((1, 2, 3), (16, 16)))
    changed, again = load_training_data(source, "prompt-one-image", cache_dir=tmp_path / "cache")
    assert again != fingerprints[0] and changed[0]["image"].getpixel((0, 0)) == (1, 2, 3)


def test_a_prompt_row_with_two_images_is_refused_where_one_image_a_prompt_is_read(tmp_path):
    with pytest.raises(DataError, match="the row has 2 images, but TRL's OnlineDPOTrainer takes exactly one") as err:
        _rows(str(IMAGES / "trl_vision.jsonl"), "prompt-one-image")
    assert (err.value.line, err.value.field) == (2, "images")
    rows, pipeline = _rows(str(IMAGES / "trl_vision.jsonl"), "prompt-one-image", skip_invalid=True)
    assert len(rows) == 1 and pipeline.stats.dropped == {"image-count": 1}
    assert _rows(str(IMAGES / "trl_vision.jsonl"), "prompt")[0][1]["images"] == [path(RED), path(BLUE)]  # GRPO's kind


def test_registry_reads_images_from_its_folder_and_still_refuses_videos(tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copytree(IMAGES / "pics", tmp_path / "pics")
    shutil.copy(IMAGES / "mllm_demo.json", tmp_path / "sub" / "mllm.json")
    entry = json.loads((IMAGES / "dataset_info.json").read_text())["mllm_demo"]
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "m": {**entry, "file_name": "sub/mllm.json"},
        "v": {**entry, "columns": {"messages": "messages", "videos": "videos"}}}))
    rows, _ = _rows({"registry": str(tmp_path / "dataset_info.json"), "name": "m"}, "sft")
    assert rows[0]["images"] == [path(str(tmp_path / "pics" / "red.png"))]  # LLaMA-Factory's media_dir
    with pytest.raises(DataError) as err:
        Source.of({"registry": str(tmp_path / "dataset_info.json"), "name": "v"})
    assert "has videos columns; dpo-cli reads text and images, not video or audio" in str(err.value)


def test_every_output_shape_that_keeps_images_keeps_them():
    rows, _ = _rows(str(IMAGES / "trl_vision.jsonl"), "preference")
    for name in ("trl", "messages", "prompt-completion", "kto", "prompt-only"):
        out = TARGETS[name](rows[1], None)
        assert all(row["images"] == rows[1]["images"] for row in out), name
