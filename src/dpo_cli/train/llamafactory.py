"""`dpo-cli import-recipe`: a LLaMA-Factory training YAML -> a dpo-cli recipe, with a comment on every key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpo_cli.core.errors import InputError
from dpo_cli.core.paths import check_output_file
from dpo_cli.recipe.trainer_fields import OWNED_TRAINER_KEYS
from dpo_cli.recipe.yamlfile import load_yaml

STAGES = {"sft": "sft", "dpo": "dpo", "kto": "kto", "rm": "reward", "ppo": "ppo"}

# keys dpo-cli decides itself, or that only steer LLaMA-Factory: said in the output, left out of the recipe
DROPPED = {
    "do_train": "dpo-cli train always trains",
    "do_eval": "held-out data (data.eval or data.eval_split) is scored before and after training",
    "template": "dpo-cli renders with the tokenizer's own chat template (model.chat_template replaces it)",
    "bf16": "mixed precision comes from the hardware (bf16 on GPUs that have it; set trainer.bf16 to force it)",
    "fp16": "mixed precision comes from the hardware (fp16 on GPUs without bf16; set trainer.fp16 to force it)",
    "overwrite_output_dir": "pass --overwrite to dpo-cli train",
    "overwrite_cache": "dpo-cli keeps no preprocessed-data cache",
    "resume_from_checkpoint": "pass --resume auto (or a checkpoint path) to dpo-cli train",
    "deepspeed": "pass --accelerate-config zero2|zero3|zero3-offload to dpo-cli train, or use accelerate launch",
}
# keys with no counterpart, and why
UNMAPPED = {
    "flash_attn": "dpo-cli loads the model's default attention implementation",
    "adapter_name_or_path": "start from a merged model instead (dpo-cli merge-lora RUN --output DIR)",
}
# LLaMA-Factory keys that are TRL fields under another name (PPO's: TRL's PPOConfig up to 1.12)
RENAMED = {"enable_liger_kernel": "use_liger_kernel", "ppo_epochs": "num_ppo_epochs",
           "ppo_whiten_rewards": "whiten_rewards", "ppo_buffer_size": "num_mini_batches"}
# LLaMA-Factory's low-rank optimizers -> transformers' optim and optim_args: (LLaMA-Factory suffix, optim_args name,
# LLaMA-Factory's default); the rest of each family's keys is unmapped when set
LOW_RANK = {
    "galore": [("rank", "rank", 16), ("update_interval", "update_proj_gap", 200), ("scale", "scale", 2.0),
               ("proj_type", "proj_type", "std")],
    "apollo": [("rank", "rank", 16), ("update_interval", "update_proj_gap", 200), ("scale", "scale", 32.0),
               ("proj_type", "proj_type", "std"), ("proj", "proj", "random"), ("scale_type", "scale_type", "channel")],
}
# LLaMA-Factory's pref_loss -> TRL's DPO loss_type
PREF_LOSSES = {"sigmoid": "sigmoid", "hinge": "hinge", "ipo": "ipo"}
# LLaMA-Factory's pref_loss values that are trainers of their own in TRL, and so stages of their own here
PREF_STAGES = {"orpo": "orpo", "simpo": "simpo"}
KTO_PAIR = ("TRL removed kto_pair from its DPO trainer: train stage kto on unpaired rows (dpo-cli convert-data "
            "--to kto splits each pair in two), or use loss_type: apo_zero for a paired alternative")


@dataclass
class Imported:
    """A translated recipe: the recipe's keys with the LLaMA-Factory key each came from, and what was left out."""

    values: dict[tuple, Any] = field(default_factory=dict)  # key path -> value, in the order written
    sources: dict[tuple, str] = field(default_factory=dict)  # key path -> "lf_key: value" it came from
    dropped: list[tuple[str, Any, str]] = field(default_factory=list)
    unmapped: list[tuple[str, Any, str]] = field(default_factory=list)
    covered: set[str] = field(default_factory=set)  # LLaMA-Factory keys accounted for

    def set(self, path: tuple, value: Any, source: str, *keys: str) -> None:
        self.values[path] = value
        self.sources[path] = source
        self.covered.update(keys)

    def drop(self, key: str, value: Any, why: str) -> None:
        self.dropped.append((key, value, why))
        self.covered.add(key)

    def unmap(self, key: str, value: Any, why: str) -> None:
        self.unmapped.append((key, value, why))
        self.covered.add(key)


def _scalar(value: Any) -> str:
    """A value as one line of YAML (lists in flow style), read back as the same value."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 20).strip() \
        .removesuffix("...").strip()


def _from(key: str, value: Any) -> str:
    return f"{key}: {_scalar(value)}"


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return [str(name) for name in value or []]


def _sources(data: dict, key: str, out: Imported) -> None:
    """dataset / eval_dataset -> data.train / data.eval: one registry source per name, max_samples as its limit."""
    names = _names(data.get(key))
    if not names:
        return
    directory = str(data.get("dataset_dir", "data"))
    if directory == "ONLINE" or directory.startswith("REMOTE:"):
        raise InputError(f"dataset_dir: {directory} reads datasets from a hub; dpo-cli reads local files: download "
                         "them and point dataset_dir at the folder holding dataset_info.json")
    limit = data.get("max_samples")
    sources = [{"registry": str(Path(directory) / "dataset_info.json"), "name": name,
                **({"limit": int(limit)} if limit else {})} for name in names]
    origin = f"{_from(key, data[key])} in {_from('dataset_dir', directory)}" + \
        ("" if "dataset_dir" in data else " (LLaMA-Factory's default)")
    if limit:
        origin += f"; max_samples: {limit} as each source's limit (its first rows)"
    out.set(("data", "train" if key == "dataset" else "eval"), sources, origin, key, "dataset_dir", "max_samples")


def _lora(data: dict, out: Imported) -> None:
    kind = data.get("finetuning_type", "lora")
    if kind == "full":
        out.drop("finetuning_type", kind, "no lora: section, so every weight is trained")
        return
    if kind != "lora":
        out.unmap("finetuning_type", kind, "dpo-cli trains all weights or LoRA adapters; this recipe trains all "
                  "weights (add a lora: section for LoRA)")
        return
    rank = int(data.get("lora_rank", 8))
    out.set(("lora", "r"), rank, _from("lora_rank", rank) if "lora_rank" in data else
            "lora_rank: LLaMA-Factory's default (dpo-cli's is 16)", "lora_rank", "finetuning_type")
    alpha = data.get("lora_alpha") or rank * 2
    out.set(("lora", "alpha"), alpha, _from("lora_alpha", alpha) if data.get("lora_alpha") else
            "lora_alpha: LLaMA-Factory's default, twice lora_rank", "lora_alpha")
    dropout = float(data.get("lora_dropout", 0.0))
    out.set(("lora", "dropout"), dropout, _from("lora_dropout", data["lora_dropout"]) if "lora_dropout" in data
            else "lora_dropout: LLaMA-Factory's default (dpo-cli's is 0.05)", "lora_dropout")
    target = data.get("lora_target", "all")
    targets = _names(target)
    out.set(("lora", "target_modules"), "all-linear" if targets in (["all"], []) else targets,
            f"{_from('lora_target', target)}; finetuning_type: lora", "lora_target")
    for key in ("use_dora", "use_rslora"):
        if key in data:
            out.set(("lora", key), bool(data[key]), _from(key, data[key]), key)
    if data.get("additional_target"):  # modules trained and saved whole beside the adapters: peft's modules_to_save
        out.set(("lora", "modules_to_save"), _names(data["additional_target"]),
                _from("additional_target", data["additional_target"]), "additional_target")


def _quantization(data: dict, out: Imported, key: str, path: tuple) -> None:
    bits = data.get(key)
    if bits is None:
        return
    if int(bits) not in (4, 8):
        out.unmap(key, bits, "bitsandbytes quantizes to 4 or 8 bits only")
        return
    out.set(path + ("bits",), int(bits), _from(key, bits), key)
    if key == "quantization_bit":
        for lf_key, ours in (("quantization_type", "quant_type"), ("double_quantization", "double_quant")):
            if lf_key in data:
                out.set(path + (ours,), data[lf_key], _from(lf_key, data[lf_key]), lf_key)
        method = data.get("quantization_method")
        if method == "bnb":
            out.drop("quantization_method", method, "dpo-cli quantizes with bitsandbytes")
        elif method is not None:
            out.unmap("quantization_method", method, "dpo-cli quantizes with bitsandbytes only")


def _preference(data: dict, stage: str, out: Imported) -> None:
    """pref_beta, pref_loss, pref_ftx and the stage's own knobs; in other stages they stay unmapped."""
    if stage not in ("dpo", "kto", "orpo", "simpo"):
        return
    if "pref_beta" in data:  # DPO's and SimPO's beta; ORPO's lambda, the weight of its odds-ratio term
        out.set(("trainer", "beta"), float(data["pref_beta"]), _from("pref_beta", data["pref_beta"]), "pref_beta")
    if stage in PREF_STAGES.values():
        out.covered.add("pref_loss")  # said by the stage it chose
        if stage == "simpo":
            for key, ours in (("simpo_gamma", "simpo_gamma"), ("pref_ftx", "cpo_alpha")):
                if key in data:  # SimPO plus pref_ftx times the SFT loss is CPO's alpha over SimPO's loss
                    out.set(("trainer", ours), float(data[key]), _from(key, data[key]), key)
        elif "pref_ftx" in data and float(data["pref_ftx"] or 0) > 0:
            out.unmap("pref_ftx", data["pref_ftx"], "ORPO's loss already holds the SFT term (its NLL on chosen)")
        elif "pref_ftx" in data:
            out.drop("pref_ftx", data["pref_ftx"], "0: no SFT term")
        return
    if stage == "kto":
        for key, ours in (("kto_chosen_weight", "desirable_weight"), ("kto_rejected_weight", "undesirable_weight")):
            if key in data:
                out.set(("trainer", ours), float(data[key]), _from(key, data[key]), key)
        return
    loss, ftx = data.get("pref_loss", "sigmoid"), float(data.get("pref_ftx") or 0.0)
    bco = float(data.get("pref_bco_weight") or 0.0)
    if loss not in PREF_LOSSES:
        out.unmap("pref_loss", loss, KTO_PAIR if loss == "kto_pair" else
                  "no such loss in TRL's DPO trainer; this recipe uses the sigmoid (DPO) loss")
    elif ftx > 0 or bco > 0:
        # LLaMA-Factory: (loss + w * BCO) / (1 + w), plus pref_ftx times the SFT loss on chosen; TRL sums its
        # loss_type list weighted by loss_weights
        types, weights, said = [PREF_LOSSES[loss]], [1.0], [_from("pref_loss", loss)]
        if bco > 0:
            types.append("bco_pair")
            weights = [1.0 / (1.0 + bco), bco / (1.0 + bco)]
            said.append(_from("pref_bco_weight", data["pref_bco_weight"]) + " as (loss + w * bco_pair) / (1 + w)")
        if ftx > 0:
            types.append("sft")
            weights.append(ftx)
            said.append(_from("pref_ftx", data["pref_ftx"]) + " times the SFT loss on chosen")
        out.set(("trainer", "loss_type"), types, "; ".join(said), "pref_loss", "pref_bco_weight")
        out.set(("trainer", "loss_weights"), weights, "; ".join(said[1:]), "pref_ftx")
    elif loss == "sigmoid" and "pref_loss" in data:
        out.drop("pref_loss", loss, "sigmoid is TRL's default DPO loss")
    elif "pref_loss" in data:
        out.set(("trainer", "loss_type"), PREF_LOSSES[loss], _from("pref_loss", loss), "pref_loss")
    if "pref_bco_weight" in data and "pref_bco_weight" not in out.covered:
        if bco == 0:
            out.drop("pref_bco_weight", data["pref_bco_weight"], "0: no BCO term, TRL's default")
        else:
            out.unmap("pref_bco_weight", data["pref_bco_weight"], f"a BCO term needs a TRL DPO loss, and pref_loss "
                      f"{loss} is not")
    if "pref_ftx" in data and "pref_ftx" not in out.covered:
        if ftx == 0:
            out.drop("pref_ftx", data["pref_ftx"], "0: no SFT term, TRL's default")
        else:
            out.unmap("pref_ftx", data["pref_ftx"], f"an SFT term needs a TRL DPO loss, and pref_loss {loss} is not")
    if "dpo_label_smoothing" in data:
        out.set(("trainer", "label_smoothing"), float(data["dpo_label_smoothing"]),
                _from("dpo_label_smoothing", data["dpo_label_smoothing"]), "dpo_label_smoothing")


def _training(data: dict, stage: str, config_fields: set[str], out: Imported) -> None:
    """Gradient checkpointing, low-rank optimizers and SFT's loss and packing, as the TRL fields that do the same."""
    if "disable_gradient_checkpointing" in data:
        if data["disable_gradient_checkpointing"]:
            out.set(("trainer", "gradient_checkpointing"), False, _from("disable_gradient_checkpointing", True),
                    "disable_gradient_checkpointing")
        else:
            out.drop("disable_gradient_checkpointing", data["disable_gradient_checkpointing"],
                     "gradient checkpointing is on in TRL too (trainer.gradient_checkpointing: true)")
    if "use_reentrant_gc" in data:
        out.set(("trainer", "gradient_checkpointing_kwargs"), {"use_reentrant": bool(data["use_reentrant_gc"])},
                _from("use_reentrant_gc", data["use_reentrant_gc"]), "use_reentrant_gc")
    for family, options in LOW_RANK.items():
        keys = [key for key in data if key.startswith(f"{family}_")] + [f"use_{family}"]
        if not data.get(f"use_{family}"):
            for key in keys:
                if key in data:
                    out.drop(key, data[key], f"use_{family} is off")
            continue
        layerwise = bool(data.get(f"{family}_layerwise"))
        optim = f"{family}_adamw" + ("_layerwise" if layerwise else "")
        said = f"use_{family}: true" + (f"; {family}_layerwise: true" if layerwise else "")
        out.set(("trainer", "optim"), optim, said, f"use_{family}", f"{family}_layerwise")
        target = data.get(f"{family}_target", "all")
        targets = _names(target)
        out.set(("trainer", "optim_target_modules"), "all-linear" if targets in (["all"], []) else targets,
                _from(f"{family}_target", target), f"{family}_target")
        args = ",".join(f"{ours}={data.get(f'{family}_{suffix}', default)}" for suffix, ours, default in options)
        out.set(("trainer", "optim_args"), args, "; ".join(_from(f"{family}_{suffix}", data[f"{family}_{suffix}"])
                                                         for suffix, _, _ in options if f"{family}_{suffix}" in data)
                or f"LLaMA-Factory's {family} defaults", *(f"{family}_{suffix}" for suffix, _, _ in options))
    if stage != "sft":
        return
    if data.get("use_dft_loss") and "loss_type" in config_fields:
        out.set(("trainer", "loss_type"), "dft", _from("use_dft_loss", True), "use_dft_loss")
    if data.get("neat_packing") and "packing" in config_fields:  # TRL's bfd packing keeps sequences apart
        out.set(("trainer", "packing"), True, f"{_from('neat_packing', True)} (TRL's packing_strategy bfd keeps "
                "packed sequences from attending to each other)", "neat_packing", "packing")
    if data.get("train_on_prompt") and "completion_only_loss" in config_fields:
        out.set(("trainer", "completion_only_loss"), False, _from("train_on_prompt", True), "train_on_prompt")
    elif "train_on_prompt" in data:
        out.unmap("train_on_prompt", data["train_on_prompt"], "TRL trains whole conversations unless "
                  "trainer.assistant_only_loss: true (which needs a chat template with generation markers), and masks "
                  "the prompt of prompt-completion rows")
    if "mask_history" in data:
        out.unmap("mask_history", data["mask_history"], "TRL trains on every assistant turn of a conversation")


def translate(data: dict) -> tuple[str, Imported]:
    """(dpo-cli stage, the translated keys) of a LLaMA-Factory training config."""
    from dpo_cli.train.stages import training_stage  # LLaMA-Factory's stages all train

    out = Imported()
    lf_stage = data.get("stage", "sft")
    if lf_stage not in STAGES:
        raise InputError(f"stage: {lf_stage} has no dpo-cli stage (dpo-cli runs {', '.join(STAGES)})")
    stage = STAGES[lf_stage]
    if stage == "dpo" and data.get("pref_loss") in PREF_STAGES:
        stage = PREF_STAGES[data["pref_loss"]]
        out.set(("stage",), stage, f"{_from('stage', lf_stage)} with {_from('pref_loss', data['pref_loss'])}: "
                f"a trainer of its own in TRL, with no reference model", "stage")
    else:
        out.set(("stage",), stage, _from("stage", lf_stage), "stage")
    if not data.get("model_name_or_path"):
        raise InputError("model_name_or_path is missing: the model to train")
    out.set(("model", "name_or_path"), str(data["model_name_or_path"]), "model_name_or_path", "model_name_or_path")
    if "trust_remote_code" in data:
        out.set(("model", "trust_remote_code"), bool(data["trust_remote_code"]), "trust_remote_code",
                "trust_remote_code")
    if training_stage(stage).uses_ref_model:
        for key, ours in (("ref_model", "name_or_path"), ("ref_model_adapters", "adapter")):
            if data.get(key):
                out.set(("ref_model", ours), str(data[key]), key, key)
        _quantization(data, out, "ref_model_quantization_bit", ("ref_model", "quantization"))
    else:
        for key in ("ref_model", "ref_model_adapters", "ref_model_quantization_bit"):
            if key in data:
                out.drop(key, data[key], f"stage {stage} has no reference model")
    _lora(data, out)
    _quantization(data, out, "quantization_bit", ("quantization",))
    if not data.get("dataset"):
        raise InputError("dataset is missing: the registry entries to train on")
    _sources(data, "dataset", out)
    _sources(data, "eval_dataset", out)
    val_size = data.get("val_size")
    if val_size and not data.get("eval_dataset"):
        if 0 < float(val_size) < 1:
            out.set(("data", "eval_split"), float(val_size), _from("val_size", val_size), "val_size")
        else:
            out.unmap("val_size", val_size, "a number of rows; data.eval_split takes a share such as 0.1")
    _preference(data, stage, out)
    out.set(("trainer", "max_length"), int(data.get("cutoff_len", 2048)),
            _from("cutoff_len", data["cutoff_len"]) if "cutoff_len" in data else
            "cutoff_len: LLaMA-Factory's default (TRL's is 1024)", "cutoff_len")
    config_class = training_stage(stage).config_class()
    config_fields = {f.name for f in dataclasses.fields(config_class)} - set(OWNED_TRAINER_KEYS)
    if "preprocessing_num_workers" in data and "dataset_num_proc" in config_fields:
        out.set(("trainer", "dataset_num_proc"), data["preprocessing_num_workers"],
                _from("preprocessing_num_workers", data["preprocessing_num_workers"]), "preprocessing_num_workers")
    if "packing" in data and "packing" not in config_fields and not data["packing"]:
        out.drop("packing", data["packing"], f"stage {stage} does not pack sequences")
    _training(data, stage, config_fields, out)
    if stage == "ppo" and data.get("reward_model"):
        out.set(("reward", "model"), str(data["reward_model"]), "reward_model", "reward_model")
    for key, path in (("output_dir", ("output_dir",)), ("seed", ("seed",)), ("plot_loss", ("plot",))):
        if key in data:
            out.set(path, data[key] if key != "plot_loss" else bool(data[key]), key, key)
    if "warmup_ratio" in data and "warmup_ratio" not in config_fields:  # transformers 5 took it into warmup_steps
        out.set(("trainer", "warmup_steps"), data["warmup_ratio"],
                f"{_from('warmup_ratio', data['warmup_ratio'])}: a warmup_steps below 1 is a share of the steps",
                "warmup_ratio")
    for key, value in data.items():  # what no handler took: a TRL field as it is, a key dpo-cli drops, or neither
        if key in out.covered:
            continue
        if key in DROPPED:
            out.drop(key, value, DROPPED[key])
        elif RENAMED.get(key, key) in config_fields:
            out.set(("trainer", RENAMED.get(key, key)), value, _from(key, value) if key in RENAMED else key, key)
        else:
            out.unmap(key, value, UNMAPPED.get(key, f"no dpo-cli setting, and "
                                               f"{config_class.__name__} has no field of that name"))
    return stage, out


def _emit(out: Imported) -> list[str]:
    """The recipe as YAML, each key followed by the LLaMA-Factory key it came from."""
    lines: list[str] = []
    written: set[tuple] = set()
    sections = list(dict.fromkeys(path[0] for path in out.values))
    for path, value in sorted(out.values.items(), key=lambda item: sections.index(item[0][0])):
        for depth in range(1, len(path)):
            if path[:depth] not in written:
                lines.append("  " * (depth - 1) + f"{path[depth - 1]}:")
                written.add(path[:depth])
        indent = "  " * (len(path) - 1)
        comment = f"  # from {out.sources[path]}"
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{path[-1]}:{comment}")
            for item in value:
                for i, (k, v) in enumerate(item.items()):
                    lines.append(f"{indent}  {'- ' if i == 0 else '  '}{k}: {_scalar(v)}")
        else:
            lines.append(f"{indent}{path[-1]}: {_scalar(value)}{comment}")
    return lines


def import_recipe(source: Path, output: Path, *, force: bool = False) -> Imported:
    """Translate ``source`` and write the recipe to ``output`` (atomically); the recipe's first line is the command
    that runs it."""
    from dpo_cli.core.atomic import atomic_write_text

    check_output_file(output, [source], what="--output", force=force)  # --force never makes the input an output
    data, _ = load_yaml(Path(source))
    _, out = translate(data)
    header = [f"# dpo-cli train {output}", f"# Imported by dpo-cli import-recipe from {source} (LLaMA-Factory).",
              "# Each key says which LLaMA-Factory key it came from."]
    if out.dropped:
        header.append("# Dropped, because dpo-cli decides these itself or has no need of them:")
        header += [f"#   {_from(key, value)}  -- {why}" for key, value, why in out.dropped]
    if out.unmapped:
        header.append("# NOT MAPPED: no dpo-cli or TRL equivalent; check that the run does what you want:")
        header += [f"#   {_from(key, value)}  -- {why}" for key, value, why in out.unmapped]
    atomic_write_text(output, "\n".join(header + _emit(out)) + "\n")
    return out
