"""RunDir: every file a run directory holds, and the one place that names, reads and writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.errors import InputError
from dpo_cli.core.redact import redact


class RunDir:
    """A run's output directory: run.json (the manifest, written last), the resolved recipe, metrics, model files,
    checkpoints, plots, the HTML report and side-by-side generations."""

    MANIFEST = "run.json"
    RECIPE = "recipe.resolved.yaml"
    METRICS = "metrics.jsonl"
    TRAINING_ARGS = "training_args.json"
    PLOTS = "plots"
    REPORT = "report.html"
    COMPARE_MD = "compare.md"
    COMPARE_JSON = "compare.json"
    PAIRS = "pairs.jsonl"  # a pairs stage's preference pairs, in TRL's rows
    SAMPLES = "samples.jsonl"  # every sample a pairs stage drew, with its reward and what became of it
    JUDGE = "judge.jsonl"  # every prompt of a judged win rate: both answers, the judge's scores and the outcome
    PIPELINE = "pipeline.json"  # a pipeline's summary: every stage's headline figures, and per round
    SWEEP = "sweep.json"  # a sweep's summary: every point's held-out figures, best first

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- what it holds ----------------------------------------------------------------------------------------------

    @property
    def manifest_file(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def recipe_file(self) -> Path:
        return self.path / self.RECIPE

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def plots_dir(self) -> Path:
        return self.path / self.PLOTS

    def is_run(self) -> bool:
        """Written by dpo-cli train: a manifest and the recipe that made it."""
        return self.manifest_file.is_file() and self.recipe_file.is_file()

    def has_weights(self) -> bool:
        """A saved model: full weights (config.json) or a LoRA adapter (adapter_config.json)."""
        return self.has_adapter() or (self.path / "config.json").is_file()

    def has_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file()

    # --- reading ----------------------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """run.json, or an InputError saying why it cannot be read."""
        try:
            value = json.loads(self.manifest_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{self.path} has no {self.MANIFEST}: is it a dpo-cli run directory?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise InputError(f"{self.manifest_file}{line}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise InputError(f"{self.manifest_file}: not a dpo-cli run manifest (a JSON object)")
        return value

    def manifest_or_none(self) -> dict[str, Any] | None:
        try:
            return self.manifest()
        except InputError:
            return None

    def recipe_text(self) -> str | None:
        return self.recipe_file.read_text(encoding="utf-8") if self.recipe_file.is_file() else None

    def metrics(self) -> list[dict]:
        """Every record of metrics.jsonl, in order."""
        if not self.metrics_file.is_file():
            raise InputError(f"{self.path} has no {self.METRICS}: is it a dpo-cli run directory?")
        records = []
        with open(self.metrics_file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{self.metrics_file}:{number}: not a JSON line ({exc.msg})") from None
        return records

    # --- writing (atomic; secrets redacted) -------------------------------------------------------------------------

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_file, json.dumps(redact(manifest), indent=2))

    def write_recipe(self, text: str) -> None:
        atomic_write_text(self.recipe_file, text)

    def write_json(self, name: str, value: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(redact(value), indent=2, ensure_ascii=False))

    def write_jsonl(self, name: str, rows: list[dict]) -> None:
        atomic_write_text(self.path / name, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def read_json(self, name: str) -> Any | None:
        """A JSON file of the run, or None when it is missing or unreadable."""
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
