"""merge-lora: fold a run's LoRA adapter into its base model in full or half precision, and check the result."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.builtins import asset_path, resolve_builtin
from dpo_cli.core.errors import InputError
from dpo_cli.core.paths import check_output, replaceable_directory
from dpo_cli.core.rundir import RunDir
from dpo_cli.recipe.schema import ModelSection
from dpo_cli.train.models import (
    config_reads_images,
    generative_class,
    loading,
    model_config,
    resolve_model_path,
    text_tokenizer,
)

ADAPTER_CONFIG = "adapter_config.json"
MERGED = "dpo-cli-merge.json"  # written into every merged model: --overwrite replaces only such a directory
# largest |logit| difference accepted between the merged model and base+adapter, per merge precision
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.05}


@dataclass
class MergeResult:
    output: Path
    base: str
    dtype: str
    prompts: int
    tokens: int
    max_abs_diff: float

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff <= TOLERANCE[self.dtype]


def _base_section(run: RunDir, adapter_config: dict) -> ModelSection:
    """The base model as the run's recipe named it (builtin:, trust_remote_code), else as peft recorded it."""
    text = run.recipe_text()
    if text is not None:
        import yaml

        model = (yaml.safe_load(text) or {}).get("model") or {}
        if model.get("name_or_path"):
            return ModelSection(name_or_path=model["name_or_path"],
                                trust_remote_code=bool(model.get("trust_remote_code", False)),
                                tokenizer=model.get("tokenizer"))
    base = adapter_config.get("base_model_name_or_path")
    if not base:
        raise InputError(f"{run / ADAPTER_CONFIG}: no base_model_name_or_path, and no {RunDir.RECIPE} "
                         f"to name the base model")
    return ModelSection(name_or_path=base)


def _merge_dtype(requested: str, base_path: str, trust_remote_code: bool) -> str:
    if requested != "auto":
        return requested
    from transformers import AutoConfig

    with loading(base_path):
        stored = getattr(AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code), "dtype", None)
    stored = str(stored).removeprefix("torch.")
    return stored if stored in ("bfloat16", "float16") else "float32"


def check_prompts(tokenizer, count: int = 4) -> list[list[int]]:
    """Token ids of the first prompts of the bundled demo evaluation pairs (English and Chinese)."""
    prompts = []
    with open(asset_path("demo/eval.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # the demo rows alternate English and Chinese, so the first few cover both scripts
    for row in rows[:count]:
        messages = row["prompt"]
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        else:
            ids = tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
        prompts.append(list(ids))
    return prompts


def _logits(model, prompts):
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids], device=model.device)).logits.float().cpu() for ids in prompts]


def merge_lora(run_dir: str | Path, output: str | Path, *, dtype: str = "auto", overwrite: bool = False) -> MergeResult:
    run_dir, output = Path(run_dir), Path(output)
    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    adapter_file = run_dir / ADAPTER_CONFIG
    if not adapter_file.is_file():
        raise InputError(f"{run_dir} has no LoRA adapter ({ADAPTER_CONFIG} missing): it was a full fine-tuning run, "
                         f"so its weights already are a complete model; there is nothing to merge")
    if dtype not in ("auto", *TOLERANCE):
        raise InputError(f"--dtype must be one of auto, {', '.join(TOLERANCE)} (never a quantized type: merging into "
                         f"4-bit weights would round the adapter away)")
    try:
        adapter_config = json.loads(adapter_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{adapter_file}: not valid JSON ({exc}); the run's adapter is damaged") from None
    section = _base_section(RunDir(run_dir), adapter_config)
    check_output(output, [run_dir, *[p for p in (Path(resolve_builtin(section.name_or_path)),) if p.exists()]],
                 what="--output")
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file, not a directory")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise InputError(f"output directory {output} is not empty; pass --overwrite to replace it")
        replaceable_directory(output, MERGED, "--output")

    import warnings

    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoProcessor, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not the user's concern

    base_path = resolve_model_path(section.name_or_path, section.trust_remote_code)
    dtype = _merge_dtype(dtype, base_path, section.trust_remote_code)
    # No quantization_config, whatever the training used: QLoRA adapters are merged into full or half precision
    config = model_config(base_path, section.trust_remote_code)
    with loading(base_path):
        base = generative_class(config).from_pretrained(base_path, dtype=getattr(torch, dtype),
                                                        trust_remote_code=section.trust_remote_code)
    has_tokenizer = (run_dir / "tokenizer_config.json").is_file()
    tokenizer_source = str(run_dir) if has_tokenizer else resolve_model_path(section.tokenizer or section.name_or_path)
    # a vision-language model keeps its processor (image processing and tokenizer) beside the merged weights
    processing_class = AutoProcessor if config_reads_images(config) else AutoTokenizer
    with loading(tokenizer_source):
        processing = processing_class.from_pretrained(tokenizer_source, trust_remote_code=section.trust_remote_code)
    tokenizer = text_tokenizer(processing)
    with loading(str(run_dir)):
        model = PeftModel.from_pretrained(base, str(run_dir)).eval()
    prompts = check_prompts(tokenizer)
    with_adapter = _logits(model, prompts)
    merged = model.merge_and_unload().eval()
    after = _logits(merged, prompts)
    diff = max(float((a - b).abs().max()) for a, b in zip(with_adapter, after))

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        processing.save_pretrained(staging)
        atomic_write_text(staging / MERGED, json.dumps({"run": str(run_dir.resolve()), "base": section.name_or_path,
                                                        "dtype": dtype, "max_abs_logit_diff": diff}, indent=2))
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return MergeResult(output, section.name_or_path, dtype, len(prompts), sum(map(len, prompts)), diff)
