"""The cache of TRL config fields (recipe/trl_fields.py): it matches the installed TRL, is rebuilt for another TRL, and
lets a recipe's bad trainer key be refused without importing torch, transformers or TRL."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from conftest import REPO
from dpo_cli.core.errors import RecipeError
from dpo_cli.recipe import trl_fields
from dpo_cli.recipe.trainer_fields import trainer_schema, validate_trainer
from dpo_cli.recipe.trl_fields import ConfigFields, cache_file, config_fields, decode, from_class
from dpo_cli.train.stages import STAGES


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty dpo-cli home, so the cache is built by the test."""
    monkeypatch.setenv("DPO_CLI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _installed_configs() -> dict[str, type]:
    found = {}
    for stage in STAGES.values():
        if stage.trains and not stage.unavailable():  # a stage that makes data has no TRL config
            found[stage.config] = stage.config_class()
    return found


# Values a recipe may give a trainer key: each type TRL's configs use, strings YAML leaves unparsed, an enum's value
PROBES = [None, True, False, 0, 3, -1, 2.5, "x", "5e-6", "true", "none", "steps", "cosine", "adamw_torch", "sigmoid",
          [1], [0.5, 1.0], ["a"], ["all-linear", "q"], {"a": 1}, {"use_reentrant": False}, (1.0, 2.0)]


def _outcome(schema, name, value):
    try:
        return "ok", getattr(schema.model_validate({name: value}), name)
    except ValidationError as exc:
        return "error", exc.errors()[0]["msg"]


def test_the_cache_holds_every_init_field_of_each_installed_config_in_order(fresh_cache):
    configs = _installed_configs()
    assert "trl:DPOConfig" in configs
    for path, config_class in configs.items():
        fields = config_fields(path)
        assert list(fields.types) == [f.name for f in dataclasses.fields(config_class) if f.init], path
        assert fields.name == config_class.__name__
        # each default as the class has it (an enum as its value), which a dry run plans from without TRL
        for f in dataclasses.fields(config_class):
            if f.init:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                default = getattr(default, "value", default)
                assert fields.defaults[f.name] == (list(default) if isinstance(default, tuple) else default), \
                    (path, f.name)
    written = json.loads(cache_file().read_text())
    assert set(written["configs"]) == set(configs)
    assert written["versions"] == trl_fields.versions()


def test_a_value_is_accepted_or_refused_alike_from_the_cache_and_from_the_class(fresh_cache):
    """Types as the cache writes them (an enum as a Literal of its values) check a value as the class's own types."""
    for path, config_class in _installed_configs().items():
        live = from_class(config_class)
        config_fields(path)  # written to disk
        read = decode(json.loads(cache_file().read_text())["configs"][path])  # as a later run reads it
        live_schema, read_schema = trainer_schema(live), trainer_schema(read)
        for name in live.types:
            if name in read.opaque:
                continue  # checked against the class itself (test below)
            for value in PROBES:
                assert _outcome(read_schema, name, value) == _outcome(live_schema, name, value), (path, name, value)


@dataclasses.dataclass
class Strategy:
    """A type pydantic checks but the cache cannot write down (like accelerate's ParallelismConfig in TRL's configs)."""

    value: int = 0


@dataclasses.dataclass
class OpaqueConfig:
    steps: int = 1
    strategy: Strategy | None = None


def test_a_field_of_a_type_the_cache_cannot_write_is_checked_against_the_class(fresh_cache):
    path = f"{__name__}:OpaqueConfig"
    assert config_fields(path).opaque == {"strategy"}

    def error(loc, message):
        return RecipeError(message, field=".".join(map(str, loc)))

    given = Strategy(1)
    assert validate_trainer(path, {"strategy": given, "steps": 2}, error) == {"strategy": given, "steps": 2}
    with pytest.raises(RecipeError, match="instance of Strategy"):
        validate_trainer(path, {"strategy": 5}, error)
    with pytest.raises(RecipeError, match="did you mean 'steps'"):
        validate_trainer(path, {"step": 2}, error)


def test_another_trl_version_gets_a_cache_of_its_own(fresh_cache, monkeypatch):
    config_fields("trl:DPOConfig")
    first = cache_file()
    real = trl_fields.versions()
    monkeypatch.setattr(trl_fields, "versions", lambda: {**real, "trl": real["trl"] + ".post1"})
    assert trl_fields.cached("trl:DPOConfig") is None  # never read under that TRL
    assert cache_file() != first
    config_fields("trl:DPOConfig")
    assert json.loads(cache_file().read_text())["versions"]["trl"] == real["trl"] + ".post1"
    assert first.exists()


def test_a_damaged_cache_file_is_read_again_from_the_class(fresh_cache):
    cache_file().parent.mkdir(parents=True)
    cache_file().write_text('{"configs": {"trl:DPOConfig": {"name": "DPOConfig", "types": {"beta": "nonsense"}}}}')
    assert trl_fields.cached("trl:DPOConfig") is None
    fields = config_fields("trl:DPOConfig")
    assert isinstance(fields, ConfigFields) and "loss_type" in fields.types
    assert "loss_type" in json.loads(cache_file().read_text())["configs"]["trl:DPOConfig"]["types"]


@pytest.mark.parametrize("pipeline", [False, True], ids=["recipe", "pipeline"])
def test_a_trainer_typo_is_refused_without_importing_torch_transformers_or_trl(write_recipe, tmp_path, pipeline):
    """On a warm cache the CLI says 'did you mean' and exits 2 before any heavy import; in a pipeline, also when the
    typo is in a stage after one that is right."""
    for config in ("trl:SFTConfig", "trl:DPOConfig"):
        config_fields(config)  # the session's dpo-cli home, which the child process inherits
    if pipeline:
        args = [str(REPO / "recipes" / "tiny" / "pipeline-sft-dpo.yaml"), f"output_dir={tmp_path}/out",
                "dpo.trainer.betaa=0.2"]
    else:
        args = [str(write_recipe(textwrap.dedent(f"""\
            stage: dpo
            model: {{name_or_path: builtin:tiny-chat}}
            data: {{train: builtin:demo/train.jsonl}}
            trainer: {{beta: 0.1}}
            output_dir: {tmp_path}/out
            """))), "trainer.betaa=0.2"]
    child = textwrap.dedent(f"""\
        import atexit, sys
        atexit.register(lambda: print("heavy:", [m for m in ("torch", "transformers", "trl") if m in sys.modules],
                                      file=sys.stderr))
        sys.argv = ["dpo-cli", "train", *{args!r}]
        from dpo_cli.cli import main
        main()
        """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "DPOConfig has no field 'betaa'; did you mean 'beta'?" in done.stderr
    assert "heavy: []" in done.stderr


def test_a_fact_of_trl_is_learned_once_per_installed_trl(fresh_cache, monkeypatch):
    learned = []

    def learn():
        learned.append(1)
        return 512

    assert trl_fields.trl_fact("chunk", learn) == 512 and trl_fields.trl_fact("chunk", learn) == 512
    assert learned == [1]
    config_fields("trl:DPOConfig")  # a config read later keeps the fact, and the fact the config
    assert trl_fields.trl_fact("chunk", learn) == 512 and learned == [1] and trl_fields.cached("trl:DPOConfig")
    real = trl_fields.versions()
    monkeypatch.setattr(trl_fields, "versions", lambda: {**real, "trl": real["trl"] + ".post1"})
    assert trl_fields.trl_fact("chunk", learn) == 512 and learned == [1, 1]


def test_null_is_refused_where_trls_field_takes_no_none_and_kept_where_it_does():
    """A dry run no longer meets TRL's own refusal of ``per_device_train_batch_size: null`` (it would plan from
    None): the check refuses it, and keeps null for a field TRL types as optional."""
    def error(loc, message):
        return RecipeError(message, field=".".join(map(str, loc)))

    with pytest.raises(RecipeError, match="valid integer") as refused:
        validate_trainer("trl:DPOConfig", {"per_device_train_batch_size": None}, error)
    assert refused.value.field == "trainer.per_device_train_batch_size"
    assert validate_trainer("trl:DPOConfig", {"loss_weights": None}, error) == {"loss_weights": None}
