"""On-disk cache of precomputed DPO reference log-probs, keyed by everything that determines them."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from .atomic import atomic_path

FORMAT = 1
COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
# peft names of adapter parameters: with the adapter disabled they take no part in the reference
_ADAPTER_MARKERS = ("lora_", ".modules_to_save.", "lora_magnitude_vector")


def _tensor_bytes(tensor) -> bytes:
    # reinterpret as bytes so bf16, float8 and 4-bit packed weights all hash exactly, without a lossy cast
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_fingerprint(model, *, adapters_disabled: bool = False) -> str:
    """SHA-256 over parameter and buffer names, dtypes, shapes and bytes; LoRA layers left out when disabled.

    Names are normalised to the plain model's, so a LoRA run with its adapter disabled and a full fine-tuning run
    from the same weights (or LoRA runs with another rank) share reference log-probs.
    """
    import torch

    items = []
    for name, value in model.state_dict().items():
        if adapters_disabled:
            if any(marker in name for marker in _ADAPTER_MARKERS):
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
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


def dataset_fingerprint(dataset, columns=("prompt_ids", "chosen_ids", "rejected_ids")) -> str:
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

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.events: list[tuple[str, str, Path]] = []  # (hit|miss|corrupt, split name, file)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, rows: int, name: str = ""):
        """The cached ``(chosen, rejected)`` tensors, or None when absent; a damaged file is reported and ignored."""
        path = self.path(key)
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                chosen, rejected = (f.get_tensor(name) for name in COLUMNS)
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
            warnings.warn(f"reference log-prob cache {path} is corrupt ({problem}); recomputing it",
                          RuntimeWarning, stacklevel=2)
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
            save_file(dict(zip(COLUMNS, (chosen, rejected))), str(tmp), metadata=metadata)
        return path


def _attach(dataset, chosen, rejected):
    from datasets import Dataset, Features, Value, concatenate_datasets

    columns = Dataset.from_dict({COLUMNS[0]: chosen.tolist(), COLUMNS[1]: rejected.tolist()},
                                features=Features({c: Value("float32") for c in COLUMNS}))
    return concatenate_datasets([dataset, columns], axis=1)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_TRAINER_CLASS = None


def cached_dpo_trainer_class():
    """TRL's DPOTrainer whose reference precompute first looks in a RefLogpCache (built lazily: imports TRL)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from importlib import metadata

    from accelerate.utils import is_peft_model
    from trl import DPOTrainer

    class CachedReferenceDPOTrainer(DPOTrainer):
        """Hooks only ``_precompute_ref_logps``: everything else, including what is computed, is TRL's."""

        def __init__(self, *args, ref_logp_cache: RefLogpCache | None = None, **kwargs):
            self.ref_logp_cache = ref_logp_cache
            self._ref_weights_fingerprint = None
            super().__init__(*args, **kwargs)

        def _reference_fingerprint(self) -> str:
            if self._ref_weights_fingerprint is None:
                if self.ref_model is not None:
                    self._ref_weights_fingerprint = weights_fingerprint(self.accelerator.unwrap_model(self.ref_model))
                else:
                    # no separate reference: TRL scores with the policy before training, adapter disabled for PEFT
                    model = self.accelerator.unwrap_model(self.model)
                    self._ref_weights_fingerprint = weights_fingerprint(model, adapters_disabled=is_peft_model(model))
            return self._ref_weights_fingerprint

        def ref_cache_components(self, dataset) -> dict[str, Any]:
            args = self.args
            precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
            return {
                "format": FORMAT,
                "reference_weights": self._reference_fingerprint(),
                "tokenizer": tokenizer_fingerprint(self._tokenizer),
                "dataset": dataset_fingerprint(dataset),
                "rows": len(dataset),
                "truncation": {"max_length": args.max_length, "truncation_mode": args.truncation_mode,
                               "pad_to_multiple_of": args.pad_to_multiple_of},
                "computation": {"ld_alpha": self.ld_alpha, "precision": precision,
                                "disable_dropout": args.disable_dropout, "trl": metadata.version("trl")},
            }

        def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
            cache = self.ref_logp_cache
            if cache is None:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            components = self.ref_cache_components(dataset)
            key = cache_key(components)
            found = cache.load(key, len(dataset), name)
            if found is not None:
                cache.events.append(("hit", name, cache.path(key)))
                if self.accelerator.is_main_process:
                    _say(f"reference log-probs for {name} ({len(dataset)} pairs) loaded from cache {cache.path(key)}")
                return _attach(dataset, *found)
            result = super()._precompute_ref_logps(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                path = cache.store(key, components, result[COLUMNS[0]], result[COLUMNS[1]])
                cache.events.append(("miss", name, path))
                _say(f"reference log-probs for {name} ({len(dataset)} pairs) computed and cached in {path}")
            self.accelerator.wait_for_everyone()
            return result

    _TRAINER_CLASS = CachedReferenceDPOTrainer
    return _TRAINER_CLASS
