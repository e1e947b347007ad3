"""Generations of a base and a tuned model side by side, greedy and sampled: compare.md and compare.json.

A prompt with images (a vision-language model's rows) is generated for through the model's processor, and its images
are shown beside the generations: their paths in the terminal and compare.md, small thumbnails in compare.json that
the HTML report embeds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.builtins import resolve_builtin
from dpo_cli.core.errors import DataError, InputError
from dpo_cli.core.rundir import RunDir
from dpo_cli.data.load import load_training_data
from dpo_cli.evidence.evaluate import load_for_eval
from dpo_cli.recipe.schema import ModelSection
from dpo_cli.train.models import load_tokenizer, quiet_libraries, text_tokenizer


@dataclass
class Settings:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


THUMBNAIL = 96  # pixels on the longer side: enough to recognise the picture, a few kB of PNG each


@dataclass
class ImagePrompt:
    """A prompt and the images its ``{"type": "image"}`` content parts place, as canonical references
    (``{"bytes", "path"}``, data/images.py)."""

    prompt: Any
    images: list[dict]


@dataclass
class Comparison:
    base: str
    tuned: str
    settings: Settings
    rows: list[dict[str, Any]] = field(default_factory=list)  # prompt, base_greedy, tuned_greedy, base_sampled, ...
    created_at: str = ""


def read_prompts(path: str | Path, n: int, *, images: bool = False) -> list[Any]:
    """The first ``n`` prompts of a file: JSON lines with a "prompt" (text or chat messages), or one text per line.

    With ``images``, a JSON line may carry ``images`` (a list) or ``image`` (one): paths relative to the file, data
    URIs or ``{bytes, path}`` structs, placed by ``{"type": "image"}`` content parts (a text prompt gets them first);
    such a prompt is an :class:`ImagePrompt`. Without, a line with images is refused rather than read as text alone.
    """
    path = Path(resolve_builtin(str(path)))
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    prompts: list[Any] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(prompts) >= n:
                break
            if not line.strip():
                continue
            if path.suffix not in (".jsonl", ".json"):
                prompts.append(line.rstrip("\n"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not a JSON line ({exc.msg})", file=path, line=number) from None
            prompt = row.get("prompt") if isinstance(row, dict) else row
            if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                                and all(isinstance(m, dict) and "content" in m for m in prompt))):
                raise DataError("expected a text or a list of chat messages", file=path, line=number, field="prompt")
            if isinstance(row, dict) and (row.get("images") is not None or row.get("image") is not None):
                if not images:
                    raise DataError("this prompt has images, and only dpo-cli compare reads prompts with images",
                                    file=path, line=number, field="images" if "images" in row else "image")
                prompt = _image_prompt(row, prompt, path, number)
            prompts.append(prompt)
    if not prompts:
        raise DataError("no prompts", file=path)
    return prompts


def _image_prompt(row: dict, prompt: Any, path: Path, number: int) -> ImagePrompt:
    from dpo_cli.data.checks import Where
    from dpo_cli.data.images import PLACEHOLDER, references, text_of

    at = Where(str(path), number)
    refs = references(row, path.parent, at)
    if isinstance(prompt, str):  # TRL's convention for text with images: the images first, in the user's turn
        prompt = [{"role": "user", "content": [*({"type": "image"} for _ in refs), {"type": "text", "text": prompt}]}]
    placed = sum(text_of(m["content"]).count(PLACEHOLDER) for m in prompt if isinstance(m.get("content"), list))
    if placed != len(refs):
        raise DataError(f"{len(refs)} image(s) but {placed} {{\"type\": \"image\"}} content part(s) in the prompt; "
                        "they must match one to one", file=path, line=number, field="prompt")
    return ImagePrompt(prompt, refs)


def data_prompts(path: str, n: int) -> list[Any]:
    """The prompts of the first ``n`` pairs of a preference data file (any format convert-data reads); a prompt with
    images is an :class:`ImagePrompt`."""
    rows, _ = load_training_data([path], "preference")
    rows = rows.select(range(min(n, len(rows))))
    if "images" not in rows.column_names:
        return [row["prompt"] for row in rows]
    import datasets

    # the references as stored (a file's path, or embedded bytes), not decoded: compare shows where an image is
    refs = rows.cast_column("images", datasets.List(datasets.Image(decode=False)))["images"]
    return [ImagePrompt(row["prompt"], list(images)) if images else row["prompt"] for row, images in zip(rows, refs)]


def encode_prompt(tokenizer, prompt, *, as_chat: bool) -> list[int]:
    if isinstance(prompt, str) and as_chat and tokenizer.chat_template:
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def open_image(ref: dict):
    """A canonical image reference as a PIL image, read whole (the file may be closed afterwards)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(ref["bytes"]) if ref.get("bytes") is not None else ref["path"])
    image.load()
    return image


def encode_image_prompt(processor, prompt: ImagePrompt) -> tuple[list[int], dict]:
    """(token ids, image tensors) of a prompt with images, as TRL's vision collators prepare a prompt: the processor's
    chat template with the assistant's turn opened, then the processor on its text and images (each image token
    expanded to the image's patches)."""
    text = processor.apply_chat_template(prompt.prompt, add_generation_prompt=True, tokenize=False)
    encoded = processor(images=[open_image(ref) for ref in prompt.images], text=[text], return_tensors="pt",
                        add_special_tokens=False)
    ids = encoded.pop("input_ids")[0].tolist()
    encoded.pop("attention_mask", None)
    return ids, dict(encoded)


def generate_answer(model, tokenizer, ids: list[int], settings: Settings, sample: bool,
                    images: dict | None = None) -> str:
    """``images``: the processor's image tensors of a prompt with images (pixel_values, ...), given to generate."""
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": settings.max_new_tokens,
                              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        # same seed for base and tuned, so the two differ by their weights, not by luck
        torch.manual_seed(settings.seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs,
                             **{k: v.to(device) for k, v in (images or {}).items()})
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def _base_of(tuned: RunDir) -> str:
    text = tuned.recipe_text()
    if text is None:
        raise InputError(f"{tuned} is not a run directory (no {RunDir.RECIPE}): pass --base MODEL")
    import yaml

    return yaml.safe_load(text)["model"]["name_or_path"]


def compare(tuned: str | Path, prompts: list[Any], *, base: str | None = None, settings: Settings | None = None,
            as_chat: bool = True) -> Comparison:
    """Generate for every prompt with both models; write compare.md and compare.json into the tuned directory."""
    import torch

    quiet_libraries()
    tuned = RunDir(tuned)
    if not tuned.path.is_dir():
        raise InputError(f"--tuned {tuned} is not a directory (give a run directory or a saved model)")
    if not tuned.has_weights():
        status = (tuned.manifest_or_none() or {}).get("status", "unknown")
        raise InputError(f"--tuned {tuned} holds no saved model (run status: {status}); compare needs a run that "
                         f"finished, or a saved model")
    base = base or _base_of(tuned)
    settings = settings or Settings()
    # DPO leaves the tokenizer alone, so the tuned run's copy (with its chat template) serves both models; a
    # vision-language model's processor, for prompts with images
    processing = _processing_class(tuned, prompts)
    tokenizer = text_tokenizer(processing)
    result = Comparison(base=base, tuned=str(tuned), settings=settings,
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    encoded = [encode_image_prompt(processing, p) if isinstance(p, ImagePrompt)
               else (encode_prompt(tokenizer, p, as_chat=as_chat), None) for p in prompts]
    result.rows = [{"prompt": p.prompt, "images": [shown_image(ref) for ref in p.images]} if isinstance(p, ImagePrompt)
                   else {"prompt": p} for p in prompts]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, path in (("base", base), ("tuned", str(tuned))):
        model = load_for_eval(path).to(device).eval()  # one model in memory at a time
        for row, (ids, images) in zip(result.rows, encoded):
            row[f"{name}_greedy"] = generate_answer(model, tokenizer, ids, settings, sample=False, images=images)
            row[f"{name}_sampled"] = generate_answer(model, tokenizer, ids, settings, sample=True, images=images)
        del model
    atomic_write_text(tuned / RunDir.COMPARE_MD, to_markdown(result))
    atomic_write_text(tuned / RunDir.COMPARE_JSON, json.dumps(asdict(result), indent=2, ensure_ascii=False))
    return result


def _processing_class(tuned: RunDir, prompts: list[Any]):
    from dpo_cli.train.models import is_vision_language, load_processing_class

    section = ModelSection(name_or_path=str(tuned))
    if not any(isinstance(p, ImagePrompt) for p in prompts):
        return load_tokenizer(section)
    if tuned.has_adapter() and not (tuned / "config.json").is_file():  # an adapter: the base's config says VLM or not
        section = ModelSection(name_or_path=_base_of(tuned), tokenizer=str(tuned))
    if not is_vision_language(section):
        raise InputError(f"the prompts have images, but {tuned} is a text-only model (its config has no "
                         f"vision_config): compare it on prompts without images")
    return load_processing_class(section)


def shown_image(ref: dict) -> dict:
    """What compare keeps of an image: where it is (its path, or "embedded" with its type) and a small PNG thumbnail as
    a data: URI, so compare.json and the HTML report show it without the file."""
    import io

    from dpo_cli.data.images import data_uri, mime_of

    source = ref["path"] if ref.get("bytes") is None else f"embedded {mime_of(ref['bytes']).split('/')[-1]}"
    image = open_image(ref)
    size = list(image.size)
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return {"source": source, "size": size, "thumbnail": data_uri(buffer.getvalue())}


def prompt_text(prompt: Any) -> str:
    """A prompt as text: chat turns one a line, an image part as ``<image>``."""
    from dpo_cli.data.images import text_of

    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {text_of(m['content'])}" for m in prompt)


def image_lines(row: dict) -> list[str]:
    """Where each image of a compared prompt is, one line each, for the terminal and compare.md."""
    return [f"image {i}: {image['source']} ({image['size'][0]}x{image['size'][1]})"
            for i, image in enumerate(row.get("images") or [], 1)]


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "\\|").replace("\n", "<br>")


def to_markdown(result: Comparison) -> str:
    s = result.settings
    lines = [
        "# Generations: base and tuned side by side", "",
        f"- base: `{result.base}`", f"- tuned: `{result.tuned}`",
        f"- greedy, and sampled with temperature {s.temperature}, top-p {s.top_p}, seed {s.seed}; "
        f"at most {s.max_new_tokens} new tokens",
        f"- written {result.created_at}", "",
    ]
    for i, row in enumerate(result.rows, 1):
        lines += [f"## {i}", "", "> " + prompt_text(row["prompt"]).replace("\n", "\n> "), "",
                  *(f"- {line}" for line in image_lines(row)), *([""] if row.get("images") else []),
                  "| | base | tuned |", "|---|---|---|",
                  f"| greedy | {_cell(row['base_greedy'])} | {_cell(row['tuned_greedy'])} |",
                  f"| sampled | {_cell(row['base_sampled'])} | {_cell(row['tuned_sampled'])} |", ""]
    return "\n".join(lines)


def comparison_table(result: Comparison):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"base {result.base}  vs  tuned {result.tuned}", title_justify="left", show_lines=True)
    for column in ("prompt", "base, greedy", "tuned, greedy", "base, sampled", "tuned, sampled"):
        table.add_column(column, overflow="fold")
    for row in result.rows:
        # Text, not markup: a generation may well contain [brackets]
        cells = ("\n".join([prompt_text(row["prompt"]), *image_lines(row)]), row["base_greedy"], row["tuned_greedy"],
                 row["base_sampled"], row["tuned_sampled"])
        table.add_row(*(Text(t or "(empty)") for t in cells))
    return table
