"""Every TRL touch point outside its documented API (train/trl_compat.py) still holds on the installed TRL."""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field

import pytest

from dpo_cli.train.trl_compat import (
    dpo_liger_is_fused_loss,
    dpo_trainer_with_precompute_hook,
    field_choices,
    fused_lm_head_tokens,
    fused_lm_head_vocab_chunk,
    ignored_field,
    quiet_trl_notices,
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
        calls.append((name, len(dataset), sorted(set(theirs.column_names) - set(dataset.column_names))))
        assert ours[0].tolist() == theirs["ref_chosen_logps"] and ours[1].tolist() == theirs["ref_rejected_logps"]
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
    assert calls == [("train", 10, ["ref_chosen_logps", "ref_rejected_logps"])]  # 10 rows: a last short batch
    assert trainer.train_dataset.column_names[-2:] == ["ref_chosen_logps", "ref_rejected_logps"]


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
