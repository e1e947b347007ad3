"""Vision-language models: which stages take images, and what --dry-run says about a model's processor and LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpo_cli.core.errors import InputError, RecipeError
from dpo_cli.recipe.schema import Recipe
from dpo_cli.train.models import (
    is_vision_language,
    language_model_prefix,
    load_processing_class,
    lora_targets,
    meta_model,
)

if TYPE_CHECKING:
    from dpo_cli.train.stages.base import Stage

IMAGE_COLUMNS = ("images", "image")  # what TRL's trainers look for to take the vision path


def has_images(columns) -> bool:
    """Rows with these columns go down TRL's vision path (its trainers test the first row for the same keys)."""
    return any(column in IMAGE_COLUMNS for column in columns or ())


def image_stages() -> list[str]:
    from dpo_cli.train.stages import STAGES

    return [name for name, stage in STAGES.items() if stage.no_images() is None]


def check_images(recipe: Recipe, stage: Stage, vision_model: bool, data_images: bool) -> None:
    """One line, exit 2, before any weight loads: a stage that cannot take a vision-language model or image rows, image
    rows for a text-only model, and the settings TRL refuses on image rows."""
    if not (vision_model or data_images):
        return
    model = recipe.model.name_or_path
    what = f"model {model} is a vision-language model" if vision_model else "the training rows hold images"
    if (reason := stage.no_images()) is not None:
        raise InputError(f"stage {stage.name} cannot take images ({what}): {reason}; the stages that do: "
                         f"{', '.join(image_stages())}")
    if not data_images:
        return
    if not vision_model:
        raise InputError(f"the training rows hold images, but model {model} reads text only (its config has no "
                         f"vision_config); use a vision-language model, or rows without images")
    trainer = recipe.trainer
    if trainer.get("truncation_mode") == "keep_end" and trainer.get("max_length", 1) is not None:
        raise RecipeError("truncation_mode keep_end would cut the image tokens out of the prompt (TRL refuses it on "
                          "image rows); use keep_start, the default", field="trainer.truncation_mode")
    if recipe.ref_model.precompute is True or trainer.get("precompute_ref_log_probs"):
        field = "ref_model.precompute" if recipe.ref_model.precompute is True else "trainer.precompute_ref_log_probs"
        raise RecipeError("TRL cannot precompute reference log-probs for image rows (it processes images on the "
                          "fly); remove it: the reference then runs at every step", field=field)
    for key in ("packing", "padding_free"):
        if trainer.get(key):
            raise RecipeError(f"TRL's trainers do not support {key} on image rows; remove it", field=f"trainer.{key}")


@dataclass(frozen=True)
class VisionFacts:
    """What --dry-run prints about a vision-language model."""

    model_type: str
    vision_params: int  # parameters outside the language model: vision tower and projector
    processor: str  # the processor's class and what it does to an image (resize, crop)
    tokens_per_image: int | None  # image tokens one image puts in the sequence (at the probed size)
    probe: str  # how tokens_per_image was found, or why it could not be
    lora: str | None  # what LoRA adapts, when the recipe has a lora: section

    def lines(self) -> list[str]:
        tokens = f"{self.tokens_per_image} tokens per image" if self.tokens_per_image is not None else \
            "tokens per image unknown"
        lines = [f"vision-language model ({self.model_type}): {self.vision_params / 1e6:.2f}M parameters in the vision "
                 f"tower and projector",
                 f"processor: {self.processor}; {tokens} ({self.probe})"]
        if self.lora is not None:
            lines.append(f"LoRA targets: {self.lora}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "vision_params": self.vision_params, "processor": self.processor,
                "tokens_per_image": self.tokens_per_image, "probe": self.probe, "lora_targets": self.lora}


def vision_params(model) -> int:
    """Parameters of a vision-language model outside its language model and LM head (vision tower, projector)."""
    prefix = language_model_prefix(model)
    if prefix is None:
        return 0
    output = model.get_output_embeddings()
    head = {id(p) for p in output.parameters()} if output is not None else set()
    language = {id(p) for p in model.get_submodule(prefix).parameters()} | head
    return sum(p.numel() for p in model.parameters() if id(p) not in language)


def _image_settings(image_processor) -> str:
    parts = [type(image_processor).__name__]
    for key in ("size", "crop_size"):
        value = getattr(image_processor, key, None)
        if value is None:
            continue
        if not isinstance(value, dict):  # transformers 5 keeps sizes as a SizeDict dataclass
            value = {k: v for k, v in vars(value).items()} if hasattr(value, "__dict__") else {"": value}
        given = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        if given:
            parts.append(f"{key} {given}")
    return ", ".join(parts)


def _tokens_per_image(processor) -> tuple[int | None, str]:
    """Run the processor on one blank image at its own crop (or resize) size and count the image tokens it makes."""
    from PIL import Image

    token = getattr(processor, "image_token", None)
    tokenizer = processor.tokenizer
    if token is None:
        return None, "the processor names no image token"
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
    side = int(size.get("height") or size.get("shortest_edge") or 224) if hasattr(size, "get") else 224
    try:
        out = processor(images=[Image.new("RGB", (side, side))], text=[token], return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - a probe: whatever a processor raises only means "unknown"
        return None, f"the processor could not be probed: {type(exc).__name__}"
    token_id = tokenizer.convert_tokens_to_ids(token)
    return int((out["input_ids"] == token_id).sum()), f"a {side}x{side} image, counted"


def vision_facts(recipe: Recipe) -> VisionFacts | None:
    """The facts of the recipe's model when it is a vision-language model (its processor and config, no weights)."""
    if not is_vision_language(recipe.model):
        return None
    processor = load_processing_class(recipe.model)
    model = meta_model(recipe.model)
    tokens, probe = _tokens_per_image(processor)
    lora = None
    if recipe.lora is not None:
        targets = lora_targets(recipe.lora, model)
        default = "target_modules" not in recipe.lora.model_fields_set
        lora = f"{targets}" + (" (the language model only, by default; set lora.target_modules to change it)"
                                 if default and targets != recipe.lora.target_modules else "")
    image_processor = getattr(processor, "image_processor", None)
    return VisionFacts(model_type=model.config.model_type, vision_params=vision_params(model),
                       processor=f"{type(processor).__name__} ("
                                 f"{_image_settings(image_processor) if image_processor else 'no image processor'})",
                       tokens_per_image=tokens, probe=probe, lora=lora)
