"""Every place dpo-cli relies on TRL beyond its documented trainer and config API, each checked by a test.

TRL moves fast (PPO, BCO, XPO, Nash-MD and PRM went within six minor versions), so what is not public API stays here,
small and named, and tests/test_trl_compat.py fails on the TRL release that breaks one of them.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

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
    try:
        from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    except ImportError:
        return None
    return int(TOKEN_CHUNK_SIZE)


def fused_lm_head_vocab_chunk() -> int | None:
    """Vocabulary columns of one tile of TRL's fused LM head (a private constant of trl.trainer.utils), else None:
    the memory plan then counts the whole vocabulary per tile, which over-counts but never under-counts."""
    try:
        from trl.trainer import utils
    except ImportError:
        return None
    chunk = getattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)
    return int(chunk) if chunk else None


def dpo_liger_is_fused_loss() -> bool:
    """TRL's DPO with use_liger_kernel runs Liger's fused DPO loss (TRL up to about 1.12: it cannot precompute the
    reference nor mix loss types) rather than Liger's layer kernels beside TRL's own fused LM head (TRL 1.16)."""
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
