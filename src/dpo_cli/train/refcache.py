"""On-disk cache of precomputed DPO reference log-probs, keyed by everything that determines them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dpo_cli.core import console
from dpo_cli.core.atomic import atomic_path, atomic_write_text
from dpo_cli.train.ranks import from_main
from dpo_cli.train.trl_compat import DPO_REF_COLUMNS, DPO_TOKEN_COLUMNS

FORMAT = 1
# peft names of adapter parameters: with the adapter disabled they take no part in the reference
_ADAPTER_MARKERS = ("lora_", ".modules_to_save.", "lora_magnitude_vector")


def _tensor_bytes(tensor) -> bytes:
    # reinterpret as bytes so bf16, float8 and 4-bit packed weights all hash exactly, without a lossy cast
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class WeightsUnavailable(ValueError):
    """The process does not hold the whole of a weight (ZeRO-3, FSDP, a meta tensor): its bytes say nothing."""


def _partial(name: str, value) -> str | None:
    """Why ``value`` (a parameter or buffer as the model keeps it) is not the whole weight, or None."""
    if getattr(value, "ds_shape", None) is not None or getattr(value, "ds_numel", None) is not None:
        return f"{name} is a DeepSpeed ZeRO-3 partition"  # its data is this rank's slice, often empty
    if getattr(value, "_is_flat_param", False) or type(value).__name__ == "DTensor":
        return f"{name} is sharded by FSDP"
    if getattr(value, "is_meta", False):
        return f"{name} is on the meta device (not loaded)"
    return None


def weights_fingerprint(model, *, adapters_disabled: bool = False) -> str:
    """SHA-256 over parameter and buffer names, dtypes, shapes and bytes; LoRA layers left out when disabled.

    Names are normalised to the plain model's, so a LoRA run with its adapter disabled and a full fine-tuning run
    from the same weights (or LoRA runs with another rank) share reference log-probs. Raises WeightsUnavailable when
    this process holds only part of a weight: the hash of ZeRO-3's empty partitions is the same for every model of a
    shape, and another model's log-probs would load under it.
    """
    import torch

    items = []
    # keep_vars: the Parameter objects, with the attributes DeepSpeed and FSDP put on them (detach() drops them)
    for name, value in model.state_dict(keep_vars=True).items():
        if adapters_disabled:
            if any(marker in name for marker in _ADAPTER_MARKERS):
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
        if (why := _partial(name, value)) is not None:
            raise WeightsUnavailable(why)
        items.append((name, value))
    digest = hashlib.sha256()
    for name, value in sorted(items, key=lambda item: item[0]):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(_tensor_bytes(value))
        else:  # bitsandbytes may keep quantisation state as plain objects
            digest.update(repr(value).encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 over the tokenizer's vocabulary and merges, special tokens, sides and chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {"special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
             "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side,
             "chat_template": tokenizer.chat_template, "class": type(tokenizer).__name__}
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def dataset_fingerprint(dataset, columns=DPO_TOKEN_COLUMNS) -> str:
    """SHA-256 over the token ids the reference scores, row by row in order (selections and filters applied)."""
    import pyarrow.compute as pc

    digest = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=4096):
        for column in columns:
            array = batch.column(column).combine_chunks()
            digest.update(column.encode())
            digest.update(pc.list_value_length(array).to_numpy(zero_copy_only=False).tobytes())
            digest.update(pc.list_flatten(array).to_numpy(zero_copy_only=False).astype("int64").tobytes())
    return digest.hexdigest()


def cache_key(components: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True, default=str).encode()).hexdigest()


def _payload_digest(chosen, rejected) -> str:
    return hashlib.sha256(_tensor_bytes(chosen) + _tensor_bytes(rejected)).hexdigest()


class RefLogpCache:
    """One safetensors file per key holding the two log-prob columns, the key's parts and a checksum."""

    def __init__(self, directory: str | Path, hint: str | None = None):
        self.directory = Path(directory)
        self.hint = hint  # stages/dpo.py's cache_hint of the run, recorded beside the train split's file
        self.events: list[tuple[str, str, Path]] = []  # (hit|miss|corrupt, split name, file)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def _hint_file(self, hint: str) -> Path:
        return self.directory / "hints" / hint

    def holds(self, hint: str) -> bool:
        """A run with this hint stored (or found) its training log-probs here, and the file is still there."""
        try:
            key = self._hint_file(hint).read_text(encoding="utf-8").strip()
        except OSError:
            return False
        return bool(key) and self.path(key).is_file()

    def remember(self, key: str) -> None:
        if self.hint:
            atomic_write_text(self._hint_file(self.hint), key)

    def load(self, key: str, rows: int, name: str = ""):
        """The cached ``(chosen, rejected)`` tensors, or None when absent; a damaged file is reported and ignored."""
        path = self.path(key)
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                chosen, rejected = (f.get_tensor(name) for name in DPO_REF_COLUMNS)
            problem = None
            if meta.get("key") != key:
                problem = "it was written for another key"
            elif chosen.shape != (rows,) or rejected.shape != (rows,):
                problem = f"it holds {tuple(chosen.shape)} log-probs for {rows} rows"
            elif meta.get("sha256") != _payload_digest(chosen, rejected):
                problem = "its checksum does not match its contents"
        except Exception as exc:  # a truncated or overwritten file: safetensors says how in many ways
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
        if problem:
            console.warn(f"reference log-prob cache {path} is corrupt ({problem}); recomputing it")
            self.events.append(("corrupt", name, path))
            return None
        return chosen, rejected

    def store(self, key: str, components: dict[str, Any], chosen, rejected) -> Path:
        import torch
        from safetensors.torch import save_file

        chosen = torch.as_tensor(chosen, dtype=torch.float32).contiguous()
        rejected = torch.as_tensor(rejected, dtype=torch.float32).contiguous()
        metadata = {"key": key, "format": str(FORMAT), "sha256": _payload_digest(chosen, rejected),
                    "components": json.dumps(components, sort_keys=True, default=str)}
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file(dict(zip(DPO_REF_COLUMNS, (chosen, rejected))), str(tmp), metadata=metadata)
        return path


def _attach(dataset, chosen, rejected):
    from datasets import Dataset, Features, Value, concatenate_datasets

    columns = Dataset.from_dict({DPO_REF_COLUMNS[0]: chosen.tolist(), DPO_REF_COLUMNS[1]: rejected.tolist()},
                                features=Features({c: Value("float32") for c in DPO_REF_COLUMNS}))
    return concatenate_datasets([dataset, columns], axis=1)


def cache_components(trainer, dataset, reference_weights: str) -> dict[str, Any]:
    """Everything that decides a DPO trainer's reference log-probs for ``dataset`` (tokenized by TRL)."""
    from importlib import metadata

    args = trainer.args
    processing = trainer.processing_class
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {
        "format": FORMAT,
        "reference_weights": reference_weights,
        "tokenizer": tokenizer_fingerprint(getattr(processing, "tokenizer", processing)),
        "dataset": dataset_fingerprint(dataset),
        "rows": len(dataset),
        "truncation": {"max_length": args.max_length, "truncation_mode": args.truncation_mode,
                       "pad_to_multiple_of": args.pad_to_multiple_of},
        "computation": {"ld_alpha": args.ld_alpha, "precision": precision, "disable_dropout": args.disable_dropout,
                        "trl": metadata.version("trl")},
    }


def reference_weights_fingerprint(trainer, separate: bool = True) -> str:
    """The weights that score the reference: a separate model, else the policy before training (adapter disabled).

    ``separate``: the run gave the trainer a reference model of its own. Without one TRL may still build a copy of
    the policy (under FSDP, sharded at once); the policy, not yet wrapped when TRL precomputes, has the same weights.
    """
    from accelerate.utils import is_peft_model

    if trainer.ref_model is not None and separate:
        if trainer.is_fsdp_enabled:  # asked before state_dict(), which under FSDP1 gathers: a collective
            raise WeightsUnavailable("the reference model is sharded by FSDP")
        return weights_fingerprint(trainer.accelerator.unwrap_model(trainer.ref_model))
    model = trainer.accelerator.unwrap_model(trainer.model)
    return weights_fingerprint(model, adapters_disabled=is_peft_model(model))


class ReferencePrecompute:
    """The reference precompute of a DPO trainer, looked up in (and added to) a RefLogpCache first when there is one.

    The main process alone hashes and reads the cache and tells every rank what it found (the log-probs
    themselves), so ranks and nodes with caches of their own never disagree: on a miss all ranks run the reference
    pass together, on a hit none does. The log-probs are attached in memory, not through a datasets cache file
    that only the main process's machine (or its temporary directory) holds.
    """

    def __init__(self, cache: RefLogpCache | None, separate: bool = True):
        self.cache = cache
        self.separate = separate  # the run passed the trainer a reference model of its own
        self._weights: str | None = None  # hashing the weights once serves the train and the eval pass

    def _lookup(self, trainer, dataset, name: str):
        """On the main process: (key, components, found log-probs or None); (None, None, None) with no key."""
        if self._weights is None:
            try:
                self._weights = reference_weights_fingerprint(trainer, self.separate)
            except WeightsUnavailable as exc:
                console.note(f"reference log-prob cache not used: the reference weights cannot be fingerprinted "
                             f"in this process ({exc}); the log-probs are computed and not stored")
                self.cache = None
                return None, None, None
        components = cache_components(trainer, dataset, self._weights)
        key = cache_key(components)
        return key, components, self.cache.load(key, len(dataset), name)

    def __call__(self, trainer, dataset, name: str, batch_size: int):
        from dpo_cli.train.trl_compat import dpo_reference_logps

        accelerator, cache = trainer.accelerator, self.cache
        key = components = found = None
        if cache is not None:
            key, components, found = from_main(
                self._lookup(trainer, dataset, name) if accelerator.is_main_process else None)
            if key is None:
                self.cache = cache = None  # the main process could not key it: no rank uses the cache
        if found is not None:
            cache.events.append(("hit", name, cache.path(key)))
            if accelerator.is_main_process:
                if name == "train":
                    cache.remember(key)
                console.note(f"reference log-probs for {name} ({len(dataset)} pairs) loaded from cache "
                             f"{cache.path(key)}")
            return _attach(dataset, *found)
        chosen, rejected = dpo_reference_logps(trainer, dataset, batch_size)
        if cache is not None:
            if accelerator.is_main_process:
                path = cache.store(key, components, chosen, rejected)
                if name == "train":
                    cache.remember(key)
                console.note(f"reference log-probs for {name} ({len(dataset)} pairs) computed and cached in {path}")
            cache.events.append(("miss", name, cache.path(key)))
            accelerator.wait_for_everyone()
        return _attach(dataset, chosen, rejected)
