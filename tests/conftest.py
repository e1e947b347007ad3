"""Shared fixtures: offline hub, a per-session dpo-cli home with the built tiny model, recipe writing helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpo_cli.train.trl_compat import quiet_trl_notices

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
quiet_trl_notices()  # as the CLI does at its start, for the tests that call the library without it

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """gpu tests run where CUDA is, and are skipped (not failed) everywhere else."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cpu_only(monkeypatch):
    """Plan as on a machine without a GPU, for tests that assert CPU behaviour (use_cpu, torchrun, device cpu) and
    must pass on GPU machines too. A subprocess the test starts sees no GPU either (CUDA_VISIBLE_DEVICES="")."""
    from dpo_cli.train import device

    monkeypatch.setattr(device, "detect_hardware", lambda: device.CPU)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return device.CPU


@pytest.fixture(scope="session", autouse=True)
def dpo_cli_home(tmp_path_factory) -> Path:
    """Build the tiny model once per session into a private home, so tests never touch the user's cache."""
    home = Path(os.environ.get("DPO_CLI_TEST_HOME") or tmp_path_factory.mktemp("dpo-cli-home"))
    os.environ["DPO_CLI_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model(dpo_cli_home) -> Path:
    from dpo_cli.core.builtins import ensure_tiny_chat

    return ensure_tiny_chat()


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe (YAML text) to a file and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
