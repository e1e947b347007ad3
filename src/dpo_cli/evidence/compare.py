"""Generations of a base and a tuned model side by side, greedy and sampled: compare.md and compare.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dpo_cli.core.atomic import atomic_write_text
from dpo_cli.core.builtins import resolve_builtin
from dpo_cli.core.errors import DataError, InputError
from dpo_cli.core.rundir import RunDir
from dpo_cli.data.load import load_training_data
from dpo_cli.evidence.evaluate import load_for_eval
from dpo_cli.recipe.schema import ModelSection
from dpo_cli.train.models import load_tokenizer, quiet_libraries


@dataclass
class Settings:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


@dataclass
class Comparison:
    base: str
    tuned: str
    settings: Settings
    rows: list[dict[str, Any]] = field(default_factory=list)  # prompt, base_greedy, tuned_greedy, base_sampled, ...
    created_at: str = ""


def read_prompts(path: str | Path, n: int) -> list[Any]:
    """The first ``n`` prompts of a file: JSON lines with a "prompt" (text or chat messages), or one text per line."""
    path = Path(resolve_builtin(str(path)))
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    prompts: list[Any] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(prompts) >= n:
                break
            if not line.strip():
                continue
            if path.suffix not in (".jsonl", ".json"):
                prompts.append(line.rstrip("\n"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not a JSON line ({exc.msg})", file=path, line=number) from None
            prompt = row.get("prompt") if isinstance(row, dict) else row
            if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                                and all(isinstance(m, dict) and "content" in m for m in prompt))):
                raise DataError("expected a text or a list of chat messages", file=path, line=number, field="prompt")
            prompts.append(prompt)
    if not prompts:
        raise DataError("no prompts", file=path)
    return prompts


def data_prompts(path: str, n: int) -> list[Any]:
    """The prompts of the first ``n`` pairs of a preference data file (any format convert-data reads)."""
    rows, _ = load_training_data([path], "preference")
    return [rows[i]["prompt"] for i in range(min(n, len(rows)))]


def encode_prompt(tokenizer, prompt, *, as_chat: bool) -> list[int]:
    if isinstance(prompt, str) and as_chat and tokenizer.chat_template:
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def generate_answer(model, tokenizer, ids: list[int], settings: Settings, sample: bool) -> str:
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": settings.max_new_tokens,
                              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        # same seed for base and tuned, so the two differ by their weights, not by luck
        torch.manual_seed(settings.seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def _base_of(tuned: RunDir) -> str:
    text = tuned.recipe_text()
    if text is None:
        raise InputError(f"{tuned} is not a run directory (no {RunDir.RECIPE}): pass --base MODEL")
    import yaml

    return yaml.safe_load(text)["model"]["name_or_path"]


def compare(tuned: str | Path, prompts: list[Any], *, base: str | None = None, settings: Settings | None = None,
            as_chat: bool = True) -> Comparison:
    """Generate for every prompt with both models; write compare.md and compare.json into the tuned directory."""
    import torch

    quiet_libraries()
    tuned = RunDir(tuned)
    if not tuned.path.is_dir():
        raise InputError(f"--tuned {tuned} is not a directory (give a run directory or a saved model)")
    if not tuned.has_weights():
        status = (tuned.manifest_or_none() or {}).get("status", "unknown")
        raise InputError(f"--tuned {tuned} holds no saved model (run status: {status}); compare needs a run that "
                         f"finished, or a saved model")
    base = base or _base_of(tuned)
    settings = settings or Settings()
    # DPO leaves the tokenizer alone, so the tuned run's copy (with its chat template) serves both models
    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tuned)))
    result = Comparison(base=base, tuned=str(tuned), settings=settings,
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    encoded = [encode_prompt(tokenizer, p, as_chat=as_chat) for p in prompts]
    result.rows = [{"prompt": p} for p in prompts]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, path in (("base", base), ("tuned", str(tuned))):
        model = load_for_eval(path).to(device).eval()  # one model in memory at a time
        for row, ids in zip(result.rows, encoded):
            row[f"{name}_greedy"] = generate_answer(model, tokenizer, ids, settings, sample=False)
            row[f"{name}_sampled"] = generate_answer(model, tokenizer, ids, settings, sample=True)
        del model
    atomic_write_text(tuned / RunDir.COMPARE_MD, to_markdown(result))
    atomic_write_text(tuned / RunDir.COMPARE_JSON, json.dumps(asdict(result), indent=2, ensure_ascii=False))
    return result


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in prompt)


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "\\|").replace("\n", "<br>")


def to_markdown(result: Comparison) -> str:
    s = result.settings
    lines = [
        "# Generations: base and tuned side by side", "",
        f"- base: `{result.base}`", f"- tuned: `{result.tuned}`",
        f"- greedy, and sampled with temperature {s.temperature}, top-p {s.top_p}, seed {s.seed}; "
        f"at most {s.max_new_tokens} new tokens",
        f"- written {result.created_at}", "",
    ]
    for i, row in enumerate(result.rows, 1):
        lines += [f"## {i}", "", "> " + prompt_text(row["prompt"]).replace("\n", "\n> "), "",
                  "| | base | tuned |", "|---|---|---|",
                  f"| greedy | {_cell(row['base_greedy'])} | {_cell(row['tuned_greedy'])} |",
                  f"| sampled | {_cell(row['base_sampled'])} | {_cell(row['tuned_sampled'])} |", ""]
    return "\n".join(lines)


def comparison_table(result: Comparison):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"base {result.base}  vs  tuned {result.tuned}", title_justify="left", show_lines=True)
    for column in ("prompt", "base, greedy", "tuned, greedy", "base, sampled", "tuned, sampled"):
        table.add_column(column, overflow="fold")
    for row in result.rows:
        # Text, not markup: a generation may well contain [brackets]
        cells = (prompt_text(row["prompt"]), row["base_greedy"], row["tuned_greedy"], row["base_sampled"],
                 row["tuned_sampled"])
        table.add_row(*(Text(t or "(empty)") for t in cells))
    return table
