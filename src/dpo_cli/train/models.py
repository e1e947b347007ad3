"""Loading tokenizers and models: the policy as its stage needs it, the reference its plan calls for, LoRA settings."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dpo_cli.core.builtins import resolve_builtin
from dpo_cli.core.errors import ModelLoadError
from dpo_cli.recipe.schema import LoraSection, ModelSection, QuantizationSection, Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.device import DevicePlan


class ModelsPlan(Protocol):
    """What load_models asks of a stage (stages/base.py's TrainingStage has it). The stages import this module, so it
    names no stage type: importing the stages package from here would import this module back half-made."""

    policy: str  # causal-lm or sequence-classifier
    peft_task: str

    def reference(self, recipe: Recipe) -> Any: ...  # a ReferencePlan: its kind, and whether ref_model names it


def resolve_model_path(name: str, trust_remote_code: bool = False) -> str:
    """A local directory, a built-in, or a hub name whose config can be fetched; otherwise one clear error."""
    name = resolve_builtin(name)
    if Path(name).exists() and not Path(name).is_dir():
        raise ModelLoadError(f"model {name} is a file, not a model directory; give the directory that holds its "
                             f"config.json and weights (a saved run or a downloaded model), or a hub name")
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ModelLoadError(f"model directory {name} does not exist (a path, so not a hub name); check the path")
    if Path(name).is_dir():
        if not any((Path(name) / f).is_file() for f in ("config.json", "adapter_config.json", "tokenizer_config.json")):
            raise ModelLoadError(f"model directory {name} holds no config.json: it is not a saved model (an "
                                 f"interrupted download or save?)")
        return name
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"model '{name}' is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({reason}). On a machine with access run `huggingface-cli download {name} --local-dir DIR`, copy DIR "
            f"here and set model.name_or_path=DIR"
        ) from None
    return name


@contextlib.contextmanager
def loading(path: str) -> Iterator[None]:
    """Around a from_pretrained of ``path``: a broken or incomplete model directory is said in one line."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, SafetensorError) as exc:  # JSON that does not parse is a ValueError too
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} cannot be loaded ({reason}); is it complete (config.json, weights, "
                             f"tokenizer files), and saved by a compatible transformers?") from None


def model_config(path: str, trust_remote_code: bool = False):
    """The transformers config of a resolved model path (read once per path, file version and process; a copy each
    call, as models built from it may change it)."""
    config_file = Path(path) / "config.json"
    stamp = (config_file.stat().st_mtime_ns, config_file.stat().st_size) if config_file.is_file() else None
    with loading(path):
        return copy.deepcopy(_config(path, trust_remote_code, stamp))


@functools.lru_cache(maxsize=16)
def _config(path: str, trust_remote_code: bool, stamp: tuple[int, int] | None):
    """``stamp`` (the config file's time and size) keys the cache, so a model saved over in this process (a pipeline
    re-run with --overwrite) is read again."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def config_reads_images(config) -> bool:
    """A vision-language model's config: a vision tower beside the language model (LLaVA, Qwen2-VL, Gemma 3, Idefics,
    Mllama all keep one under ``vision_config``); a text-only config has none."""
    return getattr(config, "vision_config", None) is not None


def is_vision_language(section: ModelSection) -> bool:
    """The recipe's model reads images; False also when its config cannot be read here (a hub name offline), where
    loading it reports that."""
    try:
        path = resolve_model_path(section.name_or_path, section.trust_remote_code)
        return config_reads_images(model_config(path, section.trust_remote_code))
    except ModelLoadError:
        return False


def _chat_template(section: ModelSection) -> str | None:
    if not section.chat_template:
        return None
    template = Path(section.chat_template)
    return template.read_text(encoding="utf-8") if template.is_file() else section.chat_template


def load_tokenizer(section: ModelSection):
    """The text tokenizer of a model; for a vision-language model, the one inside its processor."""
    from transformers import AutoTokenizer

    source = resolve_model_path(section.tokenizer or section.name_or_path, section.trust_remote_code)
    with loading(source):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=section.trust_remote_code)
    if (template := _chat_template(section)) is not None:
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_processing_class(section: ModelSection):
    """What TRL's trainers take as ``processing_class``: the tokenizer of a text model, the processor (image
    processing and tokenizer together) of a vision-language model."""
    if not is_vision_language(section):
        return load_tokenizer(section)
    from transformers import AutoProcessor

    source = resolve_model_path(section.tokenizer or section.name_or_path, section.trust_remote_code)
    with loading(source):
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=section.trust_remote_code)
    if not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{section.name_or_path} is a vision-language model, but {source} holds no processor "
                             f"with a tokenizer (processor_config.json and tokenizer files); set model.tokenizer to "
                             f"the directory of its processor")
    if (template := _chat_template(section)) is not None:
        processor.chat_template = processor.tokenizer.chat_template = template
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def text_tokenizer(processing_class):
    """The tokenizer of a processing class: the class itself, or a processor's tokenizer."""
    return getattr(processing_class, "tokenizer", None) or processing_class


def check_chat_template(recipe: Recipe, data_kind: str, tokenizer: Any) -> None:
    """Render the first training row as TRL will (prompt, prompt and each answer, tools) when it is conversational:
    a tokenizer without a chat template, or a template that raises, is one line naming the model and the row, at
    --dry-run and before any weights are loaded, rather than a traceback from inside the trainer."""
    import json

    from trl.data_utils import is_conversational, maybe_apply_chat_template

    from dpo_cli.core.errors import InputError
    from dpo_cli.data.rows import RowPipeline, Source
    from dpo_cli.data.targets import KINDS

    source = Source.of(recipe.data.train[0])
    found = next(RowPipeline(KINDS[data_kind], skip_invalid=source.skip_invalid).rows(source), None)
    if found is None or not is_conversational(found[1]):
        return
    (record, row), model = found, recipe.model.tokenizer or recipe.model.name_or_path
    if not tokenizer.chat_template:
        raise InputError(f"the tokenizer of {model} has no chat template, and the training data is conversations "
                         f"({record.file}:{record.line} holds messages); set model.chat_template to a Jinja template "
                         f"(or a file holding one), or model.tokenizer to a chat model's tokenizer")
    tools = row.get("tools")
    try:
        maybe_apply_chat_template(row, tokenizer, tools=json.loads(tools) if isinstance(tools, str) else tools)
    except Exception as exc:  # noqa: BLE001 - a template is user code: whatever it raises is the template's failure
        reason = (str(exc).strip().splitlines() or [""])[0]
        which = "model.chat_template" if recipe.model.chat_template else f"the chat template of {model}"
        raise InputError(f"{which} fails on the first training row ({record.file}:{record.line}): "
                         f"{type(exc).__name__}{': ' + reason if reason else ''}; fix the template or the row") \
            from None


def torch_dtype(name: str, plan: DevicePlan | None = None):
    """A torch dtype from a recipe's name; ``auto`` follows the device plan's mixed precision."""
    import torch

    if name == "auto":
        precision = plan.precision if plan else "fp32"
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return getattr(torch, name)


def bnb_config(section: QuantizationSection, plan: DevicePlan | None = None):
    """The transformers BitsAndBytesConfig for a quantization: section."""
    from transformers import BitsAndBytesConfig

    if section.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=section.quant_type,
                              bnb_4bit_use_double_quant=section.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(section.compute_dtype, plan))


def generative_class(config):
    """The transformers auto class a generative model of this config loads with: image-text-to-text for a
    vision-language model (its vision tower and projector load with it), causal LM otherwise."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if config_reads_images(config) else AutoModelForCausalLM


def load_causal_lm(section: ModelSection, quantization: QuantizationSection | None = None,
                   plan: DevicePlan | None = None):
    """The policy (or a reference) of a generative stage: a causal LM, or a vision-language model."""
    import torch

    path = resolve_model_path(section.name_or_path, section.trust_remote_code)
    model_class = generative_class(model_config(path, section.trust_remote_code))
    dtype = "auto" if section.dtype == "auto" else getattr(torch, section.dtype)
    kwargs: dict[str, Any] = {}
    if quantization is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = bnb_config(quantization, plan)
        # bitsandbytes places weights as it loads them: each process puts its copy on its own GPU
        on_gpu = (plan.device if plan else ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
        kwargs["device_map"] = {"": PartialState().local_process_index} if on_gpu else "cpu"
    with loading(path):
        return model_class.from_pretrained(path, dtype=dtype, trust_remote_code=section.trust_remote_code, **kwargs)


def load_sequence_classifier(section: ModelSection):
    """A one-output sequence classifier (a reward or value model); a causal LM's weights give its backbone."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(section.name_or_path, section.trust_remote_code)
    dtype = "auto" if section.dtype == "auto" else getattr(torch, section.dtype)
    with loading(path):
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype,
                                                                  trust_remote_code=section.trust_remote_code)


def language_model_prefix(model) -> str | None:
    """The module path of a vision-language model's language model (``model.language_model`` in LLaVA), or None for
    a model without a vision tower."""
    if not config_reads_images(model.config):
        return None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return next((name for name, module in model.named_modules() if name and module is decoder), None)


def lora_targets(section: LoraSection, model=None) -> str | list[str]:
    """What LoRA adapts. On a vision-language model the default (target_modules left out) is every linear layer of
    the language model: one regular expression over their paths, so the vision tower and the projector stay as
    they are, as LLaMA-Factory and the LLaVA recipes train them. Anything the recipe names is used as given
    ('all-linear' then reaches the vision tower too)."""
    if model is None or "target_modules" in section.model_fields_set:
        return section.target_modules
    prefix = language_model_prefix(model)
    if prefix is None:
        return section.target_modules
    import re

    import torch

    output = model.get_output_embeddings()
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if name.startswith(prefix + ".") and isinstance(module, torch.nn.Linear) and module is not output})
    return rf"{re.escape(prefix)}\..*\.({'|'.join(leaves)})" if leaves else section.target_modules


def lora_config(section: LoraSection, task_type: str = "CAUSAL_LM", model=None):
    """The peft LoraConfig for a lora: section; ``model`` (loaded or on the meta device) decides the default targets
    of a vision-language model."""
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=lora_targets(section, model), modules_to_save=section.modules_to_save,
                      use_dora=section.use_dora, use_rslora=section.use_rslora)


def meta_model(section: ModelSection):
    """The model's architecture on the meta device: names and shapes of every parameter, no memory, no weights read."""
    import torch

    path = resolve_model_path(section.name_or_path, section.trust_remote_code)
    config = model_config(path, section.trust_remote_code)
    with torch.device("meta"):
        return generative_class(config).from_config(config, trust_remote_code=section.trust_remote_code)


def _module_suffixes(model, kinds: tuple[type, ...]) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and
                   isinstance(module, kinds)})


def check_lora_targets(recipe: Recipe, error: ErrorAt) -> None:
    """LoRA target_modules and modules_to_save must name modules of this model; list the ones that exist."""
    import torch
    from peft import get_peft_model
    from peft.tuners.tuners_utils import check_target_module_exists

    section = recipe.lora
    try:
        model = meta_model(recipe.model)
    except ModelLoadError:
        return  # no config to check against offline: loading the model reports it, and peft checks the targets
    linear = _module_suffixes(model, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d))
    config = lora_config(section, model=model)
    if section.target_modules != "all-linear" and not any(
            check_target_module_exists(config, name) for name, _ in model.named_modules() if name):
        raise error(("lora", "target_modules"),
                    f"{section.target_modules!r} matches no module of {recipe.model.name_or_path}; its layers are: "
                    f"{', '.join(linear)} (or use 'all-linear')")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    for i, wanted in enumerate(section.modules_to_save or []):
        if wanted not in names:
            raise error(("lora", "modules_to_save", i),
                        f"'{wanted}' is not a module of {recipe.model.name_or_path}; for example: {', '.join(linear)}")
    try:
        get_peft_model(model, config)
    except ValueError as exc:
        raise error(("lora",), f"peft rejected the LoRA settings: {exc}") from None


@dataclass
class LoadedModels:
    """What a stage needs to build its trainer: TRL applies ``peft_config`` itself."""

    policy: Any
    reference: Any = None
    peft_config: Any = None


def load_reference(recipe: Recipe, plan: DevicePlan | None = None):
    """An explicit reference: another model, or the policy's weights quantized, optionally with an adapter; frozen."""
    ref = recipe.ref_model
    section = recipe.model.model_copy(update={"name_or_path": ref.name_or_path or recipe.model.name_or_path})
    model = load_causal_lm(section, ref.quantization, plan)
    if ref.adapter:
        from peft import PeftModel

        adapter = resolve_builtin(ref.adapter)
        try:
            # the adapter's layers stay in the base model, active and unmerged (exact even over 4-bit weights)
            model = PeftModel.from_pretrained(model, adapter).get_base_model()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"ref_model.adapter '{ref.adapter}' could not be loaded onto {section.name_or_path}: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
    model.requires_grad_(False)
    return model.eval()


def prepare_quantized(policy, section: QuantizationSection):
    """A quantized policy readied for an adapter: every base weight frozen, nothing cast unless the recipe asks.

    peft's prepare_model_for_kbit_training also casts every unquantized weight (embeddings, LM head, norms) to
    float32: the embedding's float32 output then makes the whole residual stream and most activations float32, and
    QLoRA peaks above LoRA on small models (measured: 36.3 GiB against 26.0 at 0.5B). The numerics that need float32
    get it without the cast: the norms compute in float32 inside (RMSNorm upcasts, autocast runs LayerNorm in
    float32), TRL's fused LM head accumulates the log-softmax in float32, and Adam's update of the bf16 adapters is
    as in the QLoRA paper. ``quantization.upcast: true`` restores peft's cast.
    """
    if section.upcast:
        from peft import prepare_model_for_kbit_training

        # gradient checkpointing is left to the trainer, which turns it on from trainer.gradient_checkpointing
        return prepare_model_for_kbit_training(policy, use_gradient_checkpointing=False)
    policy.requires_grad_(False)
    return policy


def load_models(recipe: Recipe, stage: ModelsPlan, plan: DevicePlan | None = None) -> LoadedModels:
    """The policy as the stage loads it (quantized and prepared for k-bit training for QLoRA), and the reference
    weights its reference plan holds in memory (none when shared, precomputed, or made by the TRL trainer)."""
    if stage.policy == "sequence-classifier":
        policy = load_sequence_classifier(recipe.model)
    else:
        policy = load_causal_lm(recipe.model, recipe.quantization, plan)
    if recipe.quantization is not None:
        policy = prepare_quantized(policy, recipe.quantization)
    loaded = LoadedModels(policy, peft_config=lora_config(recipe.lora, stage.peft_task, policy) if recipe.lora
                          else None)
    reference = stage.reference(recipe)
    if reference.explicit:
        loaded.reference = load_reference(recipe, plan)
    elif reference.kind == "copy":
        loaded.reference = load_causal_lm(recipe.model, None, plan)
    return loaded


def quiet_libraries() -> None:
    """No download bars or library chatter on the console; dpo-cli says what matters itself."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
