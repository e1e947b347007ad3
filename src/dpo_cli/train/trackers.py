"""Experiment trackers: trainer.report_to passes through to transformers; we only check the packages are there."""

from __future__ import annotations

import importlib.util

from dpo_cli.core.errors import RecipeError

# report_to name -> (modules any one of which transformers accepts, what to install, how to keep it offline)
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard", "event files are local: nothing to set"),
    "wandb": (("wandb",), "wandb", "set WANDB_MODE=offline, then `wandb sync` later"),
    "trackio": (("trackio",), "trackio", "trackio logs to a local database by default"),
    "mlflow": (("mlflow",), "mlflow", "set MLFLOW_TRACKING_URI to a local folder"),
    "comet_ml": (("comet_ml",), "comet_ml", "set COMET_MODE=offline"),
    "clearml": (("clearml",), "clearml", "see ClearML's offline mode"),
    "dvclive": (("dvclive",), "dvclive", "dvclive writes local files"),
    "swanlab": (("swanlab",), "swanlab", "set SWANLAB_MODE=local"),
}


def check_trackers(report_to) -> None:
    """A named tracker whose package is missing fails here, before any weights load, with the pip command."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in ("none", "all") or name not in TRACKERS:
            continue  # "all" takes whatever is installed; names we do not know are transformers' to judge
        modules, package, offline = TRACKERS[name]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise RecipeError(f"report_to '{name}' needs the {package} package: pip install {package} "
                              f"(offline use: {offline})", field="trainer.report_to")
