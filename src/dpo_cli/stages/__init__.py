"""Registry of training stages; each stage module builds one TRL config and trainer."""

from __future__ import annotations

import importlib
from types import ModuleType

# Stage name -> module. Modules import TRL, so they are only imported when a recipe names them.
_STAGES = {
    "dpo": "dpo_cli.stages.dpo",
}


def stage_names() -> list[str]:
    return list(_STAGES)


def get_stage(name: str) -> ModuleType:
    return importlib.import_module(_STAGES[name])
