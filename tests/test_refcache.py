"""Cached reference log-probs: a later run with the same key loads them; a changed key or a damaged file recomputes."""

from __future__ import annotations

import pytest

from dpo_cli.train.recipe_load import load_recipe


def _small_data(tmp_path, rows=12):
    from dpo_cli.core.builtins import asset_path

    lines = asset_path("demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def build(tiny_model, write_recipe, tmp_path):
    """Build the DPO trainer a run would build (its constructor precomputes the reference log-probs), and its cache."""
    from helpers import build_run

    data = _small_data(tmp_path)

    def make(*overrides: str, lora: bool = True):
        recipe = load_recipe(write_recipe(f"""\
stage: dpo
model: {{name_or_path: builtin:tiny-chat}}
{'lora: {r: 4}' if lora else ''}
ref_model: {{precompute: true, cache_dir: {tmp_path / 'cache'}}}
data: {{train: {data}}}
trainer: {{max_steps: 1, per_device_train_batch_size: 4, max_length: 64, report_to: none}}
output_dir: {tmp_path / 'out'}
"""), list(overrides))
        return build_run(recipe)

    return make


def _logps(trainer):
    return list(trainer.train_dataset["ref_chosen_logps"]) + list(trainer.train_dataset["ref_rejected_logps"])


@pytest.mark.slow
def test_second_run_loads_cache_without_running_reference(build, monkeypatch):
    first, cache = build()
    assert [e[0] for e in cache.events] == ["miss"]
    path = cache.events[0][2]
    assert path.is_file()
    expected = _logps(first)

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference model ran although its log-probs were cached")

    monkeypatch.setattr(type(first), "compute_ref_log_probs", no_reference)
    # a beta sweep, and another LoRA rank: the reference (adapter disabled) is the same, so is the key
    second, cache = build("trainer.beta=0.5", "lora.r=8")
    assert cache.events == [("hit", "train", path)]
    assert _logps(second) == pytest.approx(expected)
    assert second.train_dataset.features["ref_chosen_logps"] == first.train_dataset.features["ref_chosen_logps"]


@pytest.mark.slow
def test_changed_truncation_recomputes(build):
    _, cache = build()
    _, other = build("trainer.max_length=32")
    assert other.events[0][0] == "miss" and other.events[0][2] != cache.events[0][2]
    assert len(list(cache.directory.glob("*.safetensors"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_cache_is_detected_and_recomputed(build, damage, capsys):
    first, cache = build()
    path = cache.events[0][2]
    expected = _logps(first)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # header intact, one log-prob changed: only the checksum can tell
        data[-1] ^= 0x40
        path.write_bytes(bytes(data))
    capsys.readouterr()
    second, cache = build()
    assert f"warning: reference log-prob cache {path} is corrupt" in capsys.readouterr().err
    assert [e[0] for e in cache.events] == ["corrupt", "miss"]
    assert _logps(second) == pytest.approx(expected)
    assert cache.load(cache.events[1][2].stem, len(expected) // 2) is not None  # rewritten, valid again


@pytest.mark.slow
def test_a_test_trainer_gets_the_defaults_a_run_settles(build):
    """helpers.build_run builds as the run does: with the log-probs already cached, ref_model.precompute: auto
    becomes true (on any device) and the trainer reads the cache, as run.json would say."""
    _, cache = build("ref_model.precompute=true")
    assert [e[0] for e in cache.events] == ["miss"]
    trainer, cache = build("ref_model.precompute=auto")
    assert trainer.args.precompute_ref_log_probs and [e[0] for e in cache.events] == ["hit"]


def test_weights_fingerprint_ignores_a_disabled_adapter(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from dpo_cli.train.refcache import weights_fingerprint

    plain = weights_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model))
    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=2, target_modules="all-linear"))
    assert weights_fingerprint(wrapped, adapters_disabled=True) == plain
    assert weights_fingerprint(wrapped) != plain
    changed = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        changed.model.norm.weight[0] += 1e-3
    assert weights_fingerprint(changed) != plain


def test_tokenizer_fingerprint_covers_chat_template(tiny_model):
    from transformers import AutoTokenizer

    from dpo_cli.train.refcache import tokenizer_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    before = tokenizer_fingerprint(tokenizer)
    tokenizer.chat_template = tokenizer.chat_template + " "
    assert tokenizer_fingerprint(tokenizer) != before


def _partitioned(model, seed: int):
    """``model`` as DeepSpeed ZeRO-3 leaves it on a rank: each parameter's data an empty partition, its real shape
    in ds_shape (what zero.Init does to every parameter)."""
    import torch

    torch.manual_seed(seed)
    for param in model.parameters():
        shape = param.shape
        param.data = torch.empty(0, dtype=param.dtype)
        param.ds_shape, param.ds_numel = shape, shape.numel()
    return model


def test_weights_held_as_zero3_partitions_are_refused_not_hashed_empty(tiny_model):
    """The hash of ZeRO-3's empty partitions used to be the same for every model of a shape: a different model
    loaded the first one's reference log-probs."""
    import torch
    from transformers import AutoModelForCausalLM

    from dpo_cli.train.refcache import WeightsUnavailable, weights_fingerprint

    other = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        other.model.norm.weight.mul_(1.5)
    assert weights_fingerprint(other) != weights_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model))
    for model in (AutoModelForCausalLM.from_pretrained(tiny_model), other):
        with pytest.raises(WeightsUnavailable, match="ZeRO-3 partition"):
            weights_fingerprint(_partitioned(model, 0))


def test_a_reference_that_cannot_be_fingerprinted_disables_the_cache_with_a_note(tmp_path, monkeypatch, capsys):
    from dpo_cli.train import refcache

    def unavailable(trainer, separate=True):
        raise refcache.WeightsUnavailable("model.embed_tokens.weight is a DeepSpeed ZeRO-3 partition")

    monkeypatch.setattr(refcache, "reference_weights_fingerprint", unavailable)
    monkeypatch.setattr(refcache, "cache_components", lambda *a: pytest.fail("a key was made without the weights"))
    hook = refcache.ReferencePrecompute(refcache.RefLogpCache(tmp_path))
    assert hook._lookup(None, [], "train") == (None, None, None)
    assert hook.cache is None
    assert "reference log-prob cache not used: the reference weights cannot be fingerprinted" in capsys.readouterr().err


def test_an_fsdp_sharded_reference_is_refused_and_trls_own_copy_is_keyed_by_the_policy(tiny_model):
    """Under FSDP TRL shards the reference at once (a separate one, or its own copy of the policy when the run gave
    none); state_dict() there is a gather every rank must join, so only the main process may never call it."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from dpo_cli.train.refcache import WeightsUnavailable, reference_weights_fingerprint, weights_fingerprint

    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    copy = SimpleNamespace(state_dict=lambda **kw: pytest.fail("state_dict() of an FSDP-sharded reference"))
    trainer = SimpleNamespace(ref_model=copy, model=policy, is_fsdp_enabled=True,
                              accelerator=SimpleNamespace(unwrap_model=lambda model: model))
    with pytest.raises(WeightsUnavailable, match="sharded by FSDP"):
        reference_weights_fingerprint(trainer, separate=True)
    assert reference_weights_fingerprint(trainer, separate=False) == weights_fingerprint(policy)
