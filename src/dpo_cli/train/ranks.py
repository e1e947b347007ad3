"""What the processes of one run agree on: a value the main process decided, a failure any rank met."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from dpo_cli.core import console
from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.errors import InputError


def _state():
    from accelerate import PartialState

    return PartialState()


def from_main(value: Any) -> Any:
    """``value`` as the main process has it, on every rank (under one process: ``value`` itself).

    Every rank must call it; the others' ``value`` is ignored (pass None). Several ranks or nodes deciding the same
    thing from their own disks and installs would otherwise decide differently.
    """
    state = _state()
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def first_problem(problem: str | None) -> str | None:
    """The first rank's problem (by rank) among what every rank found, on every rank; None when none found one.

    Every rank must call it: a rank that fails alone leaves the others waiting for it in the next collective.
    """
    state = _state()
    if state.num_processes == 1:
        return problem
    import torch.distributed as dist

    found: list[str | None] = [None] * state.num_processes
    dist.all_gather_object(found, problem)
    return next((p for p in found if p), None)


def nodes() -> int:
    """How many machines the run spans, from the launcher's environment (torchrun, accelerate launch)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, world // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))


def check_shared_folder(folder: Path) -> None:
    """Fail every rank with one message unless all of them see ``folder`` as the same folder.

    Checkpoints hold files from every rank (each writes its own RNG state) and ``--resume`` reads them all, so with
    several machines ``output_dir`` must be on storage they share. The main process writes a file with a fresh token
    there; a rank that does not read the same token back is on a folder of its own.
    """
    import secrets

    state = _state()
    if state.num_processes == 1:
        return
    if nodes() > 1 and state.is_main_process:
        console.note(f"{nodes()} nodes: output_dir {folder} must be on storage every node shares (checkpoints hold "
                     f"each rank's files); checking that every rank sees it")
    probe = folder / f".dpo-cli-shared-{os.environ.get('MASTER_PORT', '0')}"
    token = from_main(secrets.token_hex(8) if state.is_main_process else None)
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(probe, token)
    state.wait_for_everyone()
    try:
        seen = probe.read_text(encoding="utf-8") == token
    except OSError:
        seen = False
    problem = first_problem(None if seen else
                            f"output_dir {folder} is not the same folder on every machine: rank {state.process_index} "
                            f"(on {socket.gethostname()}) does not see the file the main process wrote there. With "
                            f"several nodes, output_dir must be on storage they all share (checkpoints hold every "
                            f"rank's files, and --resume reads them all)")
    if state.is_main_process:
        probe.unlink(missing_ok=True)
    if problem:
        raise InputError(problem)
