"""A checkpoint's safetensors weights are checked by safetensors itself: a cut, lengthened or garbled file is refused
for resuming without training a model (the training tests of resume are in test_reliability.py)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from dpo_cli.train import checkpoints


@pytest.fixture
def folder(tmp_path):
    """A checkpoint folder as callbacks.py leaves it, minus the files the weights check does not need."""
    save_file({"a": torch.zeros(64), "b": torch.ones(8)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "trainer_state.json").write_text("{}")
    (tmp_path / checkpoints.MARKER).write_text(json.dumps({"step": 2, "files": {}}))
    return tmp_path


def _header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


@pytest.mark.parametrize("damage", [
    lambda data: data[:-10],  # cut inside the last tensor
    lambda data: data + b"\0" * 4,  # bytes the header does not cover
    lambda data: data[:5],  # not even the header's length
    lambda data: struct.pack("<Q", 10 ** 9) + data[8:],  # a header longer than the file
    lambda data: data[:8] + b"[" * _header_length(data) + data[8 + _header_length(data):],  # not JSON
])
def test_damaged_weights_make_the_checkpoint_unusable(folder, damage):
    assert checkpoints.problem(folder) is None
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    assert checkpoints.problem(folder).startswith("model.safetensors is truncated or corrupt (")
