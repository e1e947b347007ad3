"""Every place dpo-cli relies on TRL beyond its documented trainer and config API, each checked by a test.

TRL moves fast (PPO, BCO, XPO, Nash-MD and PRM went within six minor versions), so what is not public API stays here,
small and named, and tests/test_trl_compat.py fails on the TRL release that breaks one of them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dpo_cli.recipe.trl_fields import trl_fact

# The columns TRL's DPOTrainer tokenizes each pair into (the reference cache hashes them), and the two it adds when it
# precomputes the reference (its DPO guide names them; held-out scoring reads them).
DPO_TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
DPO_REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")

# "Possible values are: `'sigmoid'`, `'hinge'`, ..." (DPOConfig) or "Supported values are 'grpo', 'dr_grpo', ..."
_VALUES_SENTENCE = re.compile(r"(?:Possible|Supported) values are:?(.*?)\.(?:\s|$)", re.DOTALL)
_QUOTED = re.compile(r"'([A-Za-z0-9_]+)'")


def field_choices(config_class: type, name: str) -> list[str] | None:
    """The values a TRL config field accepts, from its dataclass metadata: ``choices``, else the help text's list.

    None when the field has neither: the caller decides whether that is an error (loss types fail closed).
    """
    field = next((f for f in dataclasses.fields(config_class) if f.name == name), None)
    if field is None:
        return None
    if field.metadata.get("choices"):
        return list(field.metadata["choices"])
    match = _VALUES_SENTENCE.search(field.metadata.get("help", ""))
    names = _QUOTED.findall(match.group(1)) if match else []
    return names or None


def fused_lm_head_tokens() -> int | None:
    """Positions TRL's fused LM head scores at once (TRL 1.13+ computes log-probs without full logits), else None."""
    return trl_fact("fused_lm_head_tokens", _fused_lm_head_tokens)


def _fused_lm_head_tokens() -> int | None:
    try:
        from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    except ImportError:
        return None
    return int(TOKEN_CHUNK_SIZE)


def fused_lm_head_vocab_chunk() -> int | None:
    """Vocabulary columns of one tile of TRL's fused LM head (a private constant of trl.trainer.utils), else None:
    the memory plan then counts the whole vocabulary per tile, which over-counts but never under-counts. Cached per
    installed TRL, so a dry run's memory plan imports no TRL trainer."""
    return trl_fact("fused_lm_head_vocab_chunk", _fused_lm_head_vocab_chunk)


def _fused_lm_head_vocab_chunk() -> int | None:
    try:
        from trl.trainer import utils
    except ImportError:
        return None
    chunk = getattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)
    return int(chunk) if chunk else None


def dpo_liger_is_fused_loss() -> bool:
    """TRL's DPO with use_liger_kernel runs Liger's fused DPO loss (TRL up to about 1.12: it cannot precompute the
    reference nor mix loss types) rather than Liger's layer kernels beside TRL's own fused LM head (TRL 1.16).
    Cached per installed TRL: a dry run settles the Liger default without importing TRL's trainer."""
    return trl_fact("dpo_liger_is_fused_loss", _dpo_liger_is_fused_loss)


def _dpo_liger_is_fused_loss() -> bool:
    from trl import DPOTrainer

    return hasattr(DPOTrainer, "_compute_loss_liger")


def dpo_trainer_with_precompute_hook(trainer_class: type, hook: Callable[..., Any]) -> type:
    """A subclass of TRL's DPOTrainer whose reference precompute goes through ``hook``.

    ``hook(trainer, dataset, name, batch_size)`` returns the dataset with ``ref_chosen_logps`` and
    ``ref_rejected_logps`` columns (dpo_reference_logps computes them). TRL offers no public way to supply
    precomputed reference log-probs (its ``_precompute_ref_logps`` always recomputes), and this private method has
    kept its signature from TRL 1.0 to 1.16.
    """

    class PrecomputeHookDPOTrainer(trainer_class):
        def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
            return hook(self, dataset, name, batch_size)

    PrecomputeHookDPOTrainer.__name__ = PrecomputeHookDPOTrainer.__qualname__ = trainer_class.__name__
    return PrecomputeHookDPOTrainer


def dpo_reference_logps(trainer, dataset, batch_size: int):
    """TRL's reference pass over ``dataset``: ``(chosen, rejected)`` log-prob tensors in row order, on every rank.

    The loop of TRL 1.16's ``_precompute_ref_logps`` (each rank scores its share of the batches with the trainer's
    public ``compute_ref_log_probs``, ``gather_for_metrics`` hands every rank all of them) without its last step,
    which writes the log-probs as a datasets cache file beside the dataset on the main process and reads that file
    back on every rank: for TRL's in-memory tokenized dataset the file lands in the main process's own temporary
    directory, so every other rank fails with FileNotFoundError (and a node without shared storage would too).
    Under DeepSpeed without a separate reference the policy's parameters are still on the CPU or sharded here; TRL
    wraps them in an inference engine it builds once and keeps in ``_precompute_engine`` for its later passes.
    """
    import torch
    from torch.utils.data import DataLoader

    args = trainer.args
    loader = trainer.accelerator.prepare(DataLoader(
        dataset, batch_size=batch_size, collate_fn=trainer.data_collator, num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory, shuffle=False))
    model = trainer.ref_model or trainer.model
    if trainer.ref_model is None and trainer.is_deepspeed_enabled:
        from trl.models import prepare_deepspeed

        if getattr(trainer, "_precompute_engine", None) is None:
            trainer._precompute_engine = prepare_deepspeed(trainer.model, trainer.accelerator)
        model = trainer._precompute_engine
    # TRL 1.0 picks the reference itself, compute_ref_log_probs(inputs); 1.12 and 1.16 are handed it, (model, inputs)
    takes_model = "model" in inspect.signature(trainer.compute_ref_log_probs).parameters
    chosen, rejected = [], []
    for batch in loader:
        logps = trainer.compute_ref_log_probs(model, batch) if takes_model else trainer.compute_ref_log_probs(batch)
        logps = trainer.accelerator.gather_for_metrics(logps)
        chosen.append(logps[0].float().cpu())
        rejected.append(logps[1].float().cpu())
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def free_reference(trainer) -> None:
    """Let go of a DPO trainer's separate reference model once its log-probs are precomputed, so its weights are freed.

    The loss reads the precomputed DPO_REF_COLUMNS of each batch whenever precompute_ref_log_probs is on (TRL 1.0 to
    1.16), so TRL's ``ref_model`` is dead weight from then on. Setting it to None is not enough: accelerate keeps every
    model it prepared in a private list (``Accelerator._models``, where TRL's constructor put the reference), which
    would hold the weights for the whole run.
    """
    reference, trainer.ref_model = trainer.ref_model, None
    prepared = getattr(trainer.accelerator, "_models", None)
    if isinstance(prepared, list):
        inner = getattr(reference, "module", reference)  # a wrapper's model is listed too
        prepared[:] = [m for m in prepared if m is not reference and m is not inner]


def take_over_checkpoint_rotation(args) -> int | None:
    """Turn off transformers' own checkpoint rotation and return the ``save_total_limit`` it would have kept.

    transformers reads ``args.save_total_limit`` at each save and deletes old checkpoints inside that save, before a
    caller can mark the new one complete; with the field None it deletes nothing, and callbacks.py rotates instead.
    """
    keep = args.save_total_limit
    args.save_total_limit = None
    return keep


def _token_ids(tokenizer, value, *, tools=None, generation_prompt: bool = False) -> list[int]:
    if isinstance(value, str):
        return list(tokenizer(text=value)["input_ids"])
    return list(tokenizer.apply_chat_template(value, tools=tools, add_generation_prompt=generation_prompt,
                                              tokenize=True, return_dict=True)["input_ids"])


@functools.cache
def _shared_prefix() -> Callable[[list[int], list[int]], int] | None:
    """TRL's own common_prefix_length where its DPOTrainer starts a completion where the tokenized prompt and
    prompt+completion diverge (TRL 1.16); None where it starts after the whole tokenized prompt (TRL 1.0 to 1.12)."""
    from trl import data_utils

    return getattr(data_utils, "common_prefix_length", None)


def dpo_tokenize(tokenizer, prompt, completions: Sequence, *, tools=None) -> tuple[list[list[int]], int]:
    """The token ids of prompt+completion for each completion, as TRL's DPOTrainer builds them for a pair, and the
    index where the completions start.

    TRL keeps this step private (a closure inside DPOTrainer's dataset preparation; no public helper in TRL 1.0 to
    1.16), so it is repeated here and tests/test_trl_compat.py compares it with the datasets TRL's trainer prepares.
    A conversation goes through the chat template, the prompt alone with the generation prompt; plain text gets the
    end-of-sequence token appended. The prompt part is TRL's prompt_ids: up to where the tokenized prompt and every
    prompt+completion stop sharing tokens on TRL 1.16, the whole tokenized prompt before.
    """
    tools = json.loads(tools) if isinstance(tools, str) else tools  # LLaMA-Factory data keeps tools as JSON text
    if isinstance(prompt, str):
        eos = tokenizer.eos_token or ""
        prompt_ids = _token_ids(tokenizer, prompt)
        full = [_token_ids(tokenizer, prompt + (c if c.endswith(eos) else c + eos)) for c in completions]
    else:
        prompt_ids = _token_ids(tokenizer, prompt, tools=tools, generation_prompt=True)
        full = [_token_ids(tokenizer, prompt + c, tools=tools) for c in completions]
    shared = _shared_prefix()
    start = min(shared(prompt_ids, ids) for ids in full) if shared else len(prompt_ids)
    return [prompt_ids[:start] + ids[start:] for ids in full], start


@functools.cache
def dpo_drops_filled_prompts() -> bool:
    """Whether TRL's DPOTrainer leaves out the pairs whose prompt alone fills max_length under keep_start truncation
    (TRL 1.12 and 1.16: its collator would cut every completion token); TRL 1.0 keeps them, with nothing left to
    learn. Read from its dataset preparation, which filters the tokenized dataset where it drops them."""
    from trl import DPOTrainer

    return ".filter(" in inspect.getsource(DPOTrainer._prepare_dataset)


# TRL documents an option its trainer no longer applies in the field's help: "Temporarily unavailable: ... falls back"
_UNAVAILABLE = re.compile(r"[^.]*\b(?:temporarily unavailable|currently disabled)\b[^.]*\.", re.IGNORECASE)


def ignored_field(config_class: type, name: str) -> str | None:
    """Why TRL's trainer for ``config_class`` ignores the boolean field ``name`` set to true, or None.

    Read from the installed TRL, not from a version list: the field's help says the option is unavailable (TRL 1.16's
    DPOConfig.padding_free), or the trainer's constructor sets it back to False (TRL 1.0's DPOTrainer, whose help
    still describes the option).
    """
    field = next((f for f in dataclasses.fields(config_class) if f.name == name), None)
    if field is None:
        return None
    match = _UNAVAILABLE.search(" ".join(field.metadata.get("help", "").split()))
    if match:
        return match.group(0).strip()
    import trl

    trainer = getattr(trl, config_class.__name__.removesuffix("Config") + "Trainer", None)
    try:
        source = inspect.getsource(trainer.__init__) if trainer is not None else ""
    except (OSError, TypeError):
        return None
    if re.search(rf"^\s*self\.{re.escape(name)}\s*=\s*False\s*$", source, re.MULTILINE):
        return f"{trainer.__name__} sets {name} back to False when it starts"
    return None


def quiet_trl_notices() -> None:
    """Silence the TRL notices that are not news to someone running a recipe; the CLI calls this once, at its start,
    before anything imports TRL (warning filters are process-wide, and TRL reads the variable at import)."""
    # the stages in trl.experimental (orpo, cpo, simpo, online-dpo, ppo) are used on purpose: TRL's warning on
    # importing from it is noise to the user
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    # TRL 1.16 deprecates use_liger_kernel for Hub kernels, which download at run time; dpo-cli keeps the installed
    # liger-kernel package (offline), so TRL's notice is not news to the user
    warnings.filterwarnings("ignore", message=r"`use_liger_kernel=True` is deprecated", category=FutureWarning)


def kto_takes_images() -> bool:
    """TRL's KTOTrainer has a vision path (a collator for unpaired image rows, processing images on the fly): in the
    stable trl.trainer.kto_trainer of later releases (1.12, 1.16), not in 1.0's trl.experimental.kto."""
    import importlib

    try:
        module = importlib.import_module("trl.trainer.kto_trainer")
    except ImportError:
        return False
    return hasattr(module, "DataCollatorForVisionUnpairedPreference")


@functools.cache
def online_dpo_takes_images() -> bool:
    """TRL's OnlineDPOTrainer generates from image prompts: its training step hands each batch's ``image`` column (one
    image a prompt) to its generation, which runs the processor on prompts and images together and passes the image
    tensors it made on to the loss's forward (TRL 1.16). TRL 1.0 to 1.15 run the processor a second time on the
    images with empty prompts (``text=[""] * len(images)``), which processors that count image tokens refuse
    (LLaVA's in transformers 5, tried on TRL 1.0): their image path fails at the first step. Read from the private
    ``_generate`` and the training step's source; False where the trainer is missing."""
    try:
        from trl.experimental.online_dpo import OnlineDPOTrainer
    except ImportError:
        return False
    try:
        generates = "images" in inspect.signature(OnlineDPOTrainer._generate).parameters
        step = inspect.getsource(OnlineDPOTrainer.training_step)
    except (AttributeError, OSError, TypeError, ValueError):
        return False
    return generates and re.search(r'text=\[\s*""\s*\]\s*\*', step) is None


@functools.cache
def online_dpo_cuts_image_prompts() -> bool:
    """Whether TRL's OnlineDPOTrainer cuts prompts from the left to fit max_length even when they hold images (TRL
    1.0 to 1.15: the image tokens go, their features stay, and the model's forward fails), rather than leaving image
    prompts whole (TRL 1.16). Read from its forward pass, which skips the cut where it has vision inputs."""
    from trl.experimental.online_dpo import OnlineDPOTrainer

    return "vision_inputs is None" not in inspect.getsource(OnlineDPOTrainer._forward)


def dataset_fingerprint(dataset) -> str:
    """The fingerprint datasets gives a dataset: the same for the same cache files and the same transforms (split,
    select, map), whatever the process; TRL keys its own caches of a dataset by it."""
    return dataset._fingerprint


def vision_pair_batches(processor, rows, *, max_length: int | None, batch_size: int) -> Iterator[tuple[dict, Any]]:
    """Image pairs batched as TRL's DPOTrainer batches them for a vision-language model: ``(model inputs, completion
    mask)`` per batch of ``batch_size`` rows, the chosen sequences of the batch first, then the rejected, in row order.

    The model inputs are what the trainer's forward gets (input_ids, attention_mask and the processor's image tensors:
    pixel_values, image_grid_thw, ...); the mask marks the response tokens. TRL's DPOTrainer skips its dataset
    preparation on image rows and collates them on the fly with its DataCollatorForVisionPreference (TRL 1.0 to 1.16,
    imported from trl.trainer.dpo_trainer, not exported by trl itself), which applies the chat template, runs the
    processor (prompts left-padded with their images, responses right-padded without) and truncates to max_length
    from the end; reusing it keeps held-out scores equal to what the trainer computes.
    """
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    collator = DataCollatorForVisionPreference(processor=processor, max_length=max_length)
    for start in range(0, len(rows), batch_size):
        # the collator rewrites its examples in place (images into the prompt): copies keep the caller's rows as given
        batch = collator([dict(rows[i]) for i in range(start, min(start + batch_size, len(rows)))])
        completion = batch.pop("completion_mask")
        yield dict(batch), completion


# The TrainingArguments fields transformers sets up the process group from (_setup_devices): the device, the backend,
# its timeout, DeepSpeed, and whether to keep a state configured beforehand.
DISTRIBUTED_FIELDS = ("use_cpu", "ddp_backend", "ddp_timeout", "deepspeed", "accelerator_config")


def join_processes(fields: dict[str, Any]):
    """Join the run's process group as its TRL config will set it up, before that config can be built (its defaults
    wait for the data, and the data is prepared by the main process while the others wait in the group).

    transformers starts accelerate's ``PartialState`` while it builds TrainingArguments, from DISTRIBUTED_FIELDS; the
    group it starts stays for the process, so the TRL config built later joins this one. Asking TrainingArguments
    itself, with those fields alone, keeps the backend, the timeout and the device transformers' own.
    Returns the state (process_index, num_processes, is_main_process).
    """
    from transformers import TrainingArguments

    given = {name: fields[name] for name in DISTRIBUTED_FIELDS if name in fields}
    return TrainingArguments(output_dir=str(fields.get("output_dir", "tmp_trainer")), report_to="none",
                             **given).distributed_state
