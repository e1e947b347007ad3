"""Every TRL touch point outside its documented API (train/trl_compat.py) still holds on the installed TRL."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dpo_cli.train.trl_compat import (
    DPO_REF_COLUMNS,
    DPO_TOKEN_COLUMNS,
    dpo_drops_filled_prompts,
    dpo_liger_is_fused_loss,
    dpo_tokenize,
    dpo_trainer_with_precompute_hook,
    field_choices,
    free_reference,
    fused_lm_head_tokens,
    fused_lm_head_vocab_chunk,
    ignored_field,
    quiet_trl_notices,
    take_over_checkpoint_rotation,
)


def test_dpo_and_grpo_loss_types_are_read_from_the_config_fields():
    from trl import DPOConfig, GRPOConfig, KTOConfig

    dpo = field_choices(DPOConfig, "loss_type")
    assert {"sigmoid", "hinge", "ipo", "robust", "bco_pair", "apo_zero", "sft"} <= set(dpo)
    assert {"grpo", "dr_grpo", "dapo", "bnpo"} <= set(field_choices(GRPOConfig, "loss_type"))
    assert field_choices(KTOConfig, "loss_type")[0] == "kto"  # a "choices" list in the metadata


def test_a_field_without_a_list_of_values_reads_as_none_so_callers_can_fail_closed():
    @dataclass
    class Config:
        loss_type: str = field(default="x", metadata={"help": "Type of loss to use."})

    assert field_choices(Config, "loss_type") is None
    assert field_choices(Config, "no_such_field") is None


def _has_fused_lm_head() -> bool:
    return importlib.util.find_spec("trl.kernels") is not None \
        and importlib.util.find_spec("trl.kernels.chunked_logprob") is not None


def test_fused_lm_head_size_is_known_exactly_when_trl_has_the_kernel():
    tokens = fused_lm_head_tokens()
    if not _has_fused_lm_head():
        assert tokens is None
        return
    from trl.kernels import chunked_logprob

    assert tokens == chunked_logprob.TOKEN_CHUNK_SIZE and tokens > 0


def test_the_fused_lm_head_tile_is_read_where_trl_has_one():
    """A TRL with the fused LM head also names its tile width; when that name moves, the memory plan would silently
    count the whole vocabulary per tile, so this fails instead."""
    if not _has_fused_lm_head():
        pytest.skip("this TRL has no fused LM head (TRL 1.13 added it)")
    columns = fused_lm_head_vocab_chunk()
    assert columns is not None and 0 < columns <= 1 << 20


def test_dpo_liger_route_is_read_from_the_trainer():
    """TRL 1.0 runs Liger as a fused DPO loss (which refuses a precomputed reference); TRL 1.16 runs its kernels."""
    import inspect

    from trl import DPOTrainer

    # read another way: the fused-loss route builds Liger's DPO loss in the trainer's constructor
    builds_fused_loss = "LigerFusedLinearDPOLoss" in inspect.getsource(DPOTrainer.__init__)
    assert dpo_liger_is_fused_loss() == builds_fused_loss


def test_an_option_the_trainer_ignores_is_found_from_trl_itself():
    from trl import DPOConfig, KTOConfig, SFTConfig

    assert ignored_field(DPOConfig, "padding_free")  # TRL 1.0 to 1.16: DPO warns and pads as usual
    assert ignored_field(SFTConfig, "padding_free") is None  # SFT honours it
    assert ignored_field(DPOConfig, "beta") is None and ignored_field(KTOConfig, "no_such_field") is None


@pytest.mark.slow
def test_the_precompute_hook_replaces_trls_pass_with_the_same_log_probs(tiny_model, write_recipe, tmp_path):
    """Built the way stages/dpo.py builds it: the hook is called per split, and dpo_reference_logps gives exactly
    the log-probs TRL's own pass (still reachable as the parent method) gives."""
    from dpo_cli.train.recipe_load import load_recipe
    from dpo_cli.train.trl_compat import dpo_reference_logps
    from helpers import build_trainer

    calls = []

    def hook(trainer, dataset, name, batch_size):
        ours = dpo_reference_logps(trainer, dataset, batch_size)
        theirs = super(type(trainer), trainer)._precompute_ref_logps(dataset, name, batch_size)
        calls.append((name, len(dataset), tuple(sorted(set(theirs.column_names) - set(dataset.column_names)))))
        assert [ours[0].tolist(), ours[1].tolist()] == [theirs[c] for c in DPO_REF_COLUMNS]
        return theirs

    recipe = load_recipe(write_recipe(f"""\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
ref_model: {{precompute: true, cache: false}}
data: {{train: {{path: builtin:demo/train.jsonl, limit: 10}}}}
trainer: {{max_steps: 1, per_device_train_batch_size: 4, max_length: 64}}
output_dir: {tmp_path / 'out'}
"""))
    def build_with_hook(inputs):
        from trl import DPOTrainer

        trainer_class = dpo_trainer_with_precompute_hook(DPOTrainer, hook)
        assert trainer_class.__name__ == "DPOTrainer"
        return trainer_class(model=inputs.model, ref_model=inputs.ref_model, args=inputs.args,
                             train_dataset=inputs.train_dataset, processing_class=inputs.tokenizer)

    trainer = build_trainer(recipe, build=build_with_hook)
    assert calls == [("train", 10, DPO_REF_COLUMNS)]  # 10 rows: a last short batch
    assert tuple(trainer.train_dataset.column_names[-2:]) == DPO_REF_COLUMNS


def test_trl_notices_are_silenced_for_the_whole_process_once(monkeypatch):
    monkeypatch.delenv("TRL_EXPERIMENTAL_SILENCE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_trl_notices()
        warnings.warn("`use_liger_kernel=True` is deprecated and will be removed in v2.0.0. Use the Hub kernels "
                      "instead", FutureWarning, stacklevel=1)
        warnings.warn("another notice", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another notice"]
    assert os.environ["TRL_EXPERIMENTAL_SILENCE"] == "1"  # TRL's own switch for its trl.experimental warning


def test_the_cli_silences_trl_notices_before_it_runs_a_command(monkeypatch):
    import dpo_cli.cli as cli

    order = []
    monkeypatch.setattr("dpo_cli.train.trl_compat.quiet_trl_notices", lambda: order.append("quiet"))
    monkeypatch.setattr(cli, "app", lambda: order.append("command"))
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # leave pytest's own SIGTERM handling alone
    cli.main()
    assert order == ["quiet", "command"]


def test_kto_takes_images_where_trl_has_the_vision_collator():
    """dpo-cli lets KTO take images where this says so; checked on the TRL lines CI runs (1.0 and the newest)."""
    from importlib import metadata

    from dpo_cli.train.trl_compat import kto_takes_images

    version = tuple(int(part) for part in metadata.version("trl").split(".")[:2])
    if version >= (1, 12):  # 1.12 and 1.16 read: DataCollatorForVisionUnpairedPreference in trl.trainer.kto_trainer
        assert kto_takes_images()
    elif version < (1, 1):  # 1.0 kept KTO in trl.experimental.kto, text only
        assert not kto_takes_images()
    else:
        pytest.skip(f"TRL {version} was not read for KTO's vision path")


# Renders tools, and ends the generation prompt with an empty thought block that the whole conversation does not
# have (as Gemma's and Qwen3's templates do): the tokenized prompt is then not a prefix of prompt+completion.
THINKING_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)


def _dpo_config(tmp_path, **fields):
    from trl import DPOConfig

    return DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, bf16=False,
                     per_device_train_batch_size=2, save_strategy="no", **fields)


def test_pairs_are_tokenized_as_trls_dpo_trainer_prepares_them(tiny_model, tmp_path):
    """dpo_tokenize against the token ids TRL's own trainer puts in its datasets (DPO_TOKEN_COLUMNS): conversations
    with tools through a chat template whose prompt is no prefix of the conversation, plain text whose prompt and
    completion merge into one token, and a prompt that fills max_length, which TRL drops where dpo_drops_filled_prompts
    says it does."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = THINKING_TEMPLATE
    tools = '[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]'
    chats = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
              "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
              "rejected": [{"role": "assistant", "content": "No idea"}], "tools": tools if i % 2 else None}
             for i in range(3)]
    texts = [{"prompt": "The final ans", "chosen": "wer is four", "rejected": "wer is five"},
             {"prompt": "Say yes.", "chosen": " yes", "rejected": " no"},
             {"prompt": " ".join(["a long prompt"] * 30), "chosen": " yes", "rejected": " no"}]
    max_length = 160
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=_dpo_config(
        tmp_path, max_length=max_length), train_dataset=Dataset.from_list(chats),
        eval_dataset=Dataset.from_list(texts), processing_class=tokenizer)

    prompt = tokenizer.apply_chat_template(chats[0]["prompt"], add_generation_prompt=True)["input_ids"]
    whole = tokenizer.apply_chat_template(chats[0]["prompt"] + chats[0]["chosen"])["input_ids"]
    assert whole[:len(prompt)] != prompt  # the case TRL 1.16 handles with a common prefix, and older TRL does not
    for rows, prepared in ((chats, trainer.train_dataset), (texts, trainer.eval_dataset)):
        assert set(DPO_TOKEN_COLUMNS) <= set(prepared.column_names)
        ours = [dpo_tokenize(tokenizer, row["prompt"], [row["chosen"], row["rejected"]], tools=row.get("tools"))
                for row in rows]
        kept = [o for o in ours if not (dpo_drops_filled_prompts() and o[1] >= max_length)]
        theirs = [([row["prompt_ids"] + row["chosen_ids"], row["prompt_ids"] + row["rejected_ids"]],
                   len(row["prompt_ids"])) for row in prepared]
        assert theirs == kept
    assert ours[-1][1] >= max_length  # the long prompt fills max_length ...
    assert dpo_drops_filled_prompts() == (len(trainer.eval_dataset) == len(texts) - 1)  # ... and is dropped or kept
    assert len(trainer.train_dataset) == len(chats)
    assert "Tools: [" in tokenizer.decode(trainer.train_dataset[1]["prompt_ids"])  # the tools were rendered


@pytest.mark.slow
def test_a_freed_reference_leaves_memory_and_training_reads_the_precomputed_log_probs(tiny_model, tmp_path):
    """With the reference's log-probs precomputed, free_reference drops the last reference to its weights (accelerate
    kept one, so setting ref_model to None alone freed nothing), and a training step still runs without it."""
    import gc
    import weakref

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    rows = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
             "chosen": [{"role": "assistant", "content": "Yes."}], "rejected": [{"role": "assistant", "content": "No"}]}
            for i in range(4)]
    reference = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), ref_model=reference,
                         args=_dpo_config(tmp_path, precompute_ref_log_probs=True, max_steps=1),
                         train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(tiny_model))
    assert set(DPO_REF_COLUMNS) <= set(trainer.train_dataset.column_names)
    alive = weakref.ref(reference)
    del reference
    free_reference(trainer)
    gc.collect()
    assert trainer.ref_model is None and alive() is None
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.state.log_history[-1]["train_loss"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("taken_over", [False, True])
def test_taking_over_rotation_stops_transformers_deleting_checkpoints(tiny_model, tmp_path, taken_over):
    """transformers deletes checkpoints past save_total_limit inside its save; once taken over, it deletes none and
    the limit is handed to dpo-cli's own rotation (callbacks.CompleteCheckpoints)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, save_steps=1, save_total_limit=1,
                             per_device_train_batch_size=1, report_to="none", use_cpu=True, logging_strategy="no")
    if taken_over:
        assert take_over_checkpoint_rotation(args) == 1
    data = Dataset.from_list([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}] * 3)
    Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args, train_dataset=data).train()
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert kept == (["checkpoint-1", "checkpoint-2", "checkpoint-3"] if taken_over else ["checkpoint-3"])


# --- nothing of TRL's or transformers' internals outside trl_compat.py, read from the source -------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dpo_cli"
COMPAT = PACKAGE / "train" / "trl_compat.py"
# private names the package uses that belong to neither TRL nor transformers
NOT_TRLS = {
    "os._exit": "the standard library's exit without cleanup, documented for forked and dying processes",
    "_is_flat_param": "torch FSDP's mark on a flat parameter: refcache.py refuses to hash a shard",
}
# names of the filtering calls that take a message pattern: warnings.filterwarnings(action, message, ...)
_FILTERS = {"filterwarnings", "simplefilter"}


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_in(cls: ast.ClassDef) -> set[str]:
    """Names a class gives itself: in its body, and assigned to self.<name> in its methods."""
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return names


def internals(source: str, forbidden: tuple[str, ...]) -> list[str]:
    """Where ``source`` reaches for another library's private name, names one of ``forbidden`` (TRL's internal
    column names and the texts and switches trl_compat quiets TRL with) or filters a warning by its text."""
    tree = ast.parse(source)
    found = []
    own = {}  # id(node) -> the private names its enclosing class defines (found once per class)
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            defined = _defined_in(cls)
            own.update((id(node), defined) for node in ast.walk(cls))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("dpo_cli"):
            found += [f"line {node.lineno}: imports {a.name} from {node.module}" for a in node.names if _private(a.name)]
            if any(_private(part) for part in (node.module or "").split(".")):
                found.append(f"line {node.lineno}: imports from the private module {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: imports the private module {a.name}" for a in node.names
                      if any(_private(part) for part in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = ast.unparse(node.value)
            if f"{base}.{node.attr}" in NOT_TRLS or (base in ("self", "cls") and node.attr in own.get(id(node), ())):
                continue
            found.append(f"line {node.lineno}: {base}.{node.attr}")
        elif isinstance(node, ast.Call):
            callee = ast.unparse(node.func).rsplit(".", 1)[-1]
            named = node.args[1] if len(node.args) > 1 else None
            if callee in ("getattr", "hasattr", "setattr", "delattr") and isinstance(named, ast.Constant) and \
                    isinstance(named.value, str) and _private(named.value) and named.value not in NOT_TRLS:
                found.append(f"line {node.lineno}: {callee}(..., {named.value!r})")
            if callee in _FILTERS and (named is not None or any(k.arg == "message" for k in node.keywords)):
                found.append(f"line {node.lineno}: a warning filtered by its text")
    for line, text in _strings(tree):
        found += [f"line {line}: names {name!r}" for name in forbidden if re.search(rf"\b{re.escape(name)}\b", text)]
    return sorted(found, key=lambda where: int(where.split()[1].rstrip(":")))


def _quieted() -> tuple[str, ...]:
    """The message patterns and environment switches trl_compat.quiet_trl_notices uses, read from its source."""
    texts = []
    for node in ast.walk(ast.parse(COMPAT.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("filterwarnings"):
            texts += [k.value.value for k in node.keywords if k.arg == "message"]
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.setdefault", "os.environ.get"):
            texts.append(node.args[0].value)
    return tuple(texts)


def test_no_trl_or_transformers_internal_outside_trl_compat():
    """No private name of TRL's or transformers' (imported, or read off their objects), none of TRL's internal column
    names, no TRL warning text or switch outside train/trl_compat.py; there they are named, each with a test."""
    forbidden = (*DPO_TOKEN_COLUMNS, *DPO_REF_COLUMNS, *_quieted())
    assert "TRL_EXPERIMENTAL_SILENCE" in forbidden and len(forbidden) >= 7  # read from trl_compat, not empty
    found = [f"{path.relative_to(PACKAGE)} {where}" for path in sorted(PACKAGE.rglob("*.py")) if path != COMPAT
             for where in internals(path.read_text(encoding="utf-8"), forbidden)]
    assert found == []


def test_the_internals_check_finds_each_kind():
    source = '''
import warnings
from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE
from transformers._internal import thing
import trl._private


class Ours(SomeTrainer):
    def __init__(self):
        self._mine = 1

    def step(self):
        return self._mine + self._theirs


def build(trainer, accelerator):
    trainer._precompute_engine = None
    if getattr(trainer, "_signature_columns", None) and hasattr(accelerator, "__dict__"):
        columns = ["prompt_ids", "ref_chosen_logps"]
    warnings.filterwarnings("ignore", message="TRL says so")
    warnings.filterwarnings("ignore", "positional text")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os._exit(0)
'''
    found = internals(source, ("prompt_ids", "ref_chosen_logps"))
    assert found == [
        "line 3: imports _CHUNKED_LOGPROB_CHUNK_SIZE from trl.trainer.utils",
        "line 4: imports from the private module transformers._internal",
        "line 5: imports the private module trl._private",
        "line 13: self._theirs",
        "line 17: trainer._precompute_engine",
        "line 18: getattr(..., '_signature_columns')",
        "line 19: names 'prompt_ids'",
        "line 19: names 'ref_chosen_logps'",
        "line 20: a warning filtered by its text",
        "line 21: a warning filtered by its text",
    ], found


def test_a_datasets_fingerprint_names_the_same_rows_in_every_load(tmp_path):
    """What the truncation measurement is kept under: the same prepared rows loaded again, and the same split of
    them, have the same fingerprint; another selection has another."""
    from dpo_cli.data.load import load_training_data
    from dpo_cli.train.trl_compat import dataset_fingerprint

    source = Path(__file__).resolve().parents[1] / "src/dpo_cli/assets/demo/train.jsonl"
    first, _ = load_training_data(str(source), cache_dir=tmp_path)
    again, _ = load_training_data(str(source), cache_dir=tmp_path)
    assert dataset_fingerprint(first) == dataset_fingerprint(again)
    split = [d.train_test_split(test_size=0.25, seed=3)["train"] for d in (first, again)]
    assert dataset_fingerprint(split[0]) == dataset_fingerprint(split[1]) != dataset_fingerprint(first)
    assert dataset_fingerprint(first.select([0, 1])) != dataset_fingerprint(first.select([1, 2]))


def test_image_pairs_are_batched_and_scored_as_trls_dpo_trainer_does(tmp_path, dpo_cli_home):
    """vision_pair_batches reuses TRL's vision collator: its batches are the trainer's own eval batches, and the
    held-out log-probs dpo-cli computes from them are the ones TRL's reference pass computes (policy = reference)."""
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    from dpo_cli.core.builtins import ensure_tiny_vlm
    from dpo_cli.train.scoring import Truncation, score_pairs
    from dpo_cli.train.trl_compat import dpo_reference_logps, vision_pair_batches
    from test_vlm import _rows

    path = ensure_tiny_vlm()
    processor = AutoProcessor.from_pretrained(path)
    rows = datasets.Dataset.from_list(_rows("preference", 5)).cast_column("images",
                                                                          datasets.Sequence(datasets.Image()))
    max_length = 96
    trainer = DPOTrainer(model=AutoModelForImageTextToText.from_pretrained(path),
                         args=_dpo_config(tmp_path, max_length=max_length, per_device_eval_batch_size=2,
                                          gradient_checkpointing=False),
                         train_dataset=rows, eval_dataset=rows, processing_class=processor)
    ours, completion = next(vision_pair_batches(processor, rows, max_length=max_length, batch_size=2))
    theirs = next(iter(trainer.get_eval_dataloader()))
    assert "pixel_values" in ours and set(ours) | {"completion_mask"} == set(theirs)
    for key, value in ours.items():
        assert torch.equal(value.cpu(), theirs[key].cpu()), key
    assert torch.equal(completion.cpu(), theirs["completion_mask"].cpu())

    scores = score_pairs(trainer.model, processor, rows, truncation=Truncation(max_length), batch_size=4)
    chosen, rejected = dpo_reference_logps(trainer, trainer.eval_dataset, 2)
    assert len(scores.chosen) == len(chosen) == 5
    torch.testing.assert_close(scores.chosen, chosen, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(scores.rejected, rejected, atol=1e-3, rtol=1e-4)


def test_the_process_group_is_joined_from_the_fields_transformers_sets_it_up_from(tmp_path):
    """train joins its process group before its TRL config exists (the config waits for the data): the state must be
    the one the config would set up, so the fields that decide it are every field TrainingArguments' device set-up
    reads, and the state it gives is the config's."""
    import dataclasses
    import inspect

    from transformers import TrainingArguments

    from dpo_cli.train.trl_compat import DISTRIBUTED_FIELDS, join_processes

    setup = TrainingArguments.__dict__["_setup_devices"]
    source = inspect.getsource(getattr(setup, "func", setup))
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(re.findall(r"self\.([A-Za-z_]\w*)", source)) & fields == set(DISTRIBUTED_FIELDS)

    state = join_processes({"use_cpu": True, "ddp_timeout": 77, "output_dir": str(tmp_path), "bf16": False})
    joined = (state.device, state.process_index, state.num_processes, state.distributed_type)  # accelerate's state
    # is shared by every PartialState: read it before the config sets it up again
    config = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, ddp_timeout=77)
    assert joined == (config.device, config.process_index, config.world_size,
                      config.distributed_state.distributed_type)
    assert joined[0].type == "cpu"


def test_online_dpo_takes_images_where_its_trl_generates_from_them_and_keeps_them_whole():
    """dpo-cli lets online DPO take image prompts where this says so (TRL 1.16), and then plans no max_length cut for
    them: a TRL whose online DPO takes images and cuts image prompts again fails here."""
    from importlib import metadata

    from dpo_cli.train.stages import unavailable
    from dpo_cli.train.trl_compat import online_dpo_cuts_image_prompts, online_dpo_takes_images

    if unavailable("online-dpo"):
        pytest.skip(unavailable("online-dpo"))
    version = tuple(int(part) for part in metadata.version("trl").split(".")[:2])
    if version >= (1, 16):
        assert online_dpo_takes_images() and not online_dpo_cuts_image_prompts()
    else:  # 1.0 and 1.12 read: the processor runs on the images with empty prompts, and cuts them
        assert not online_dpo_takes_images() and online_dpo_cuts_image_prompts()
