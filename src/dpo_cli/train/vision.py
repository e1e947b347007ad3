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


def judge_note(stage: Stage, recipe: Recipe) -> str | None:
    """What a run on image prompts says once about its judge: the reward models read the prompts' text alone."""
    sampling = stage.sampling(recipe) if stage.uses_reward else None
    models = sampling.reward_models if sampling is not None else ()
    if not models:
        return None
    many = len(models) > 1
    return (f"the reward model{'s' if many else ''} judging the samples ({', '.join(models)}) "
            f"read{'' if many else 's'} text only: the prompt's text with each image as <image>, never the image "
            f"itself; the images go to the policy, which generates from them")


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
    judge: str | None = None  # what the stage's judge sees of the image rows, when it cannot see the images

    def lines(self) -> list[str]:
        tokens = f"{self.tokens_per_image} tokens per image" if self.tokens_per_image is not None else \
            "tokens per image unknown"
        lines = [f"vision-language model ({self.model_type}): {self.vision_params / 1e6:.2f}M parameters in the vision "
                 f"tower and projector",
                 f"processor: {self.processor}; {tokens} ({self.probe})"]
        if self.lora is not None:
            lines.append(f"LoRA targets: {self.lora}")
        if self.judge is not None:
            lines.append(self.judge)
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "vision_params": self.vision_params, "processor": self.processor,
                "tokens_per_image": self.tokens_per_image, "probe": self.probe, "lora_targets": self.lora,
                "judge": self.judge}


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


class PromptImageTokens:
    """The prompts of the training rows in tokens, each image counted as the tokens it expands to: a max_length
    shorter than a prompt with its image tokens makes TRL's collator cut image tokens whose image features stay, and
    the model's forward fails mid-training ("Image features and image tokens do not match").

    Called with every training row at --dry-run (Stage.check_data's ``visit``); the rows themselves are not kept, only
    each image row's text tokens and image count. The prompt is rendered as TRL's vision collators render it (the
    processor's chat template, the assistant's turn opened), each image as its one image token.
    """

    def __init__(self, processor):
        self.processor = processor
        self.image_token = getattr(processor, "image_token", None)
        tokenizer = processor.tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(self.image_token) if self.image_token else None
        self.text: list[int] = []  # per image row: prompt tokens other than image tokens
        self.images: list[int] = []  # per image row: image tokens before expansion (one per image)

    def __call__(self, row: dict) -> None:
        if self.image_id is None:
            return
        prompt = row.get("prompt")
        if prompt is None and isinstance(row.get("messages"), list):  # a conversation: the turns before the answer
            turns = row["messages"]
            prompt = turns[:next((i for i, t in enumerate(turns) if t.get("role") == "assistant"), len(turns))]
        if not isinstance(prompt, list) or not prompt:
            return  # image rows are conversational (data/images.py makes them so)
        try:
            text = self.processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that fails is the dry run's template check to report
            self.image_id = None  # and nothing more is measured
            return
        ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        images = ids.count(self.image_id)
        if images:
            self.text.append(len(ids) - images)
            self.images.append(images)

    def longest(self, tokens_per_image: int) -> tuple[int, int, int]:
        """(tokens, images, text tokens) of the longest image row's prompt with its images expanded."""
        lengths = [t + n * tokens_per_image for t, n in zip(self.text, self.images)]
        index = max(range(len(lengths)), key=lengths.__getitem__)
        return lengths[index], self.images[index], self.text[index]

    def over(self, tokens_per_image: int, max_length: int) -> int:
        return sum(t + n * tokens_per_image > max_length for t, n in zip(self.text, self.images))

    def error(self, tokens_per_image: int | None, max_length: int | None) -> RecipeError | None:
        """trainer.max_length shorter than a training row's prompt with its image tokens, as an error to say at
        --dry-run; None when every prompt fits (or nothing can be measured)."""
        if tokens_per_image is None or max_length is None or not self.text:
            return None
        longest, images, text = self.longest(tokens_per_image)
        if longest <= max_length:
            return None
        over = self.over(tokens_per_image, max_length)
        return RecipeError(
            f"{max_length} is shorter than the prompts of {over} of {len(self.text)} image row"
            f"{'s' if len(self.text) != 1 else ''} once each image is its {tokens_per_image} image tokens (the "
            f"longest: {images} image{'s' if images != 1 else ''} x {tokens_per_image} + {text} text tokens = "
            f"{longest}); TRL would cut image tokens whose image features remain, and the model's forward fails "
            f"mid-training. Raise trainer.max_length to at least {longest} (more for the responses), or shorten "
            f"those prompts", field="trainer.max_length")
