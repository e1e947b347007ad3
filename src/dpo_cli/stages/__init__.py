"""Registry of training stages; each stage module builds one TRL config and trainer."""

from __future__ import annotations

import importlib
from types import ModuleType

# Stage name -> module. Modules import TRL only inside their functions, so importing one is cheap; a stage whose
# trainer the installed TRL lacks says so through its optional ``unavailable()`` hook.
_STAGES = {
    "sft": "dpo_cli.stages.sft",
    "dpo": "dpo_cli.stages.dpo",
    "kto": "dpo_cli.stages.kto",
    "reward": "dpo_cli.stages.reward",
    "grpo": "dpo_cli.stages.grpo",
    "ppo": "dpo_cli.stages.ppo",
}


def stage_names() -> list[str]:
    return list(_STAGES)


def get_stage(name: str) -> ModuleType:
    return importlib.import_module(_STAGES[name])


def unavailable(name: str) -> str | None:
    """Why the installed libraries cannot run this stage, or None when they can."""
    check = getattr(get_stage(name), "unavailable", None)
    return check() if check is not None else None
