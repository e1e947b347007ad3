"""Pairs stage: sample k completions per prompt from a model, judge them, and write best-vs-worst preference pairs.

It trains nothing. Its flow replaces the seven training steps: prompts, models, sample and judge, pair, write.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from typing import Any

from dpo_cli.core import console
from dpo_cli.core.errors import DpoCliError, InputError
from dpo_cli.core.rundir import RunDir
from dpo_cli.recipe.schema import Recipe, SamplingSection
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.device import plan_device
from dpo_cli.train.manifest import RunResult, now, open_run
from dpo_cli.train.models import load_causal_lm, load_tokenizer, quiet_libraries, resolve_model_path
from dpo_cli.train.sampling import sample_transformers, sample_vllm, vllm_missing
from dpo_cli.train.scoring import Truncation, encode_pairs, score_sequences
from dpo_cli.train.stages.base import ASSUMED_PROMPT_TOKENS, DataStage, ReferencePlan, SamplingPlan
from dpo_cli.train.stages.checks import (
    PROMPT_DATA,
    judge_specs,
    raise_at_field,
    reward_functions,
    reward_model_paths,
)


class NoPairs(DpoCliError):
    """Every prompt's samples tied or were unusable, so there is nothing to train on (exit code 1)."""


def validate(recipe: Recipe, error: ErrorAt) -> None:
    judge_specs(recipe, error)
    if recipe.sampling is not None and recipe.sampling.engine == "vllm" and (reason := vllm_missing()):
        raise error(("sampling", "engine"), reason)


def sampling(recipe: Recipe) -> SamplingPlan:
    settings = recipe.sampling or SamplingSection()
    return SamplingPlan(settings.batch_size * settings.num_samples, ASSUMED_PROMPT_TOKENS + settings.max_new_tokens,
                        reward_model_paths(recipe))


class Judge:
    """The reward: section as one number per sample, the way TRL combines rewards: a weighted sum over the functions,
    where a function's None skips it; NaN when no function scored the sample."""

    def __init__(self, recipe: Recipe, columns: list[str], device):
        self.functions, self.tokenizers = reward_functions(recipe, judge_specs(recipe, raise_at_field), columns)
        for function, tokenizer in zip(self.functions, self.tokenizers):
            if tokenizer is not None:  # a reward model comes with its tokenizer
                function.to(device).eval()
        weights = recipe.reward.weights
        self.weights = weights if weights is not None else [1.0] * len(self.functions)

    def __call__(self, prompts: list[Any], completions: list[Any], extra: dict[str, list]) -> list[float]:
        columns = []
        for function, tokenizer in zip(self.functions, self.tokenizers):
            if tokenizer is not None:  # a reward model scores prompt and completion as TRL's trainers feed it
                rows = [{"prompt": p, "response": c} for p, c in zip(prompts, completions)]
                sequences, _ = encode_pairs(tokenizer, rows, Truncation(), ("response",), keep_all=True)
                values = score_sequences(function, tokenizer, sequences).tolist()
            else:  # a guarded function: it names itself and the batch when it fails; no trainer runs, so no state
                values = function(prompts=prompts, completions=completions, trainer_state=None, **extra)
            columns.append([math.nan if v is None else float(v) for v in values])
        totals = []
        for values in zip(*columns):
            terms = [w * v for w, v in zip(self.weights, values) if not math.isnan(v)]
            totals.append(sum(terms) if terms else math.nan)
        return totals


def _as_response(prompt: Any, text: str) -> Any:
    """A completion in the prompt's shape: chat messages get one assistant message, plain text stays text."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def _sample_and_judge(rows, indices: list[int], samples_of, judge: Judge, settings: SamplingSection) -> list[dict]:
    """Every prompt at ``indices`` with its samples and their rewards, in order."""
    extra_columns = [c for c in rows.column_names if c != "prompt"]
    prompts = [rows[i]["prompt"] for i in indices]
    k = settings.num_samples
    out, position = [], 0
    for batch in samples_of(prompts):
        count = len(batch) // k
        chunk = prompts[position:position + count]
        repeated = [p for p in chunk for _ in range(k)]
        extra = {c: [rows[i][c] for i in indices[position:position + count] for _ in range(k)] for c in extra_columns}
        rewards = judge(repeated, [_as_response(p, s.text) for p, s in zip(repeated, batch)], extra)
        for j, prompt in enumerate(chunk):
            out.append({"index": indices[position + j], "prompt": prompt,
                        "samples": [{"text": s.text, "finished": s.finished, "reward": r}
                                    for s, r in zip(batch[j * k:(j + 1) * k], rewards[j * k:(j + 1) * k])]})
        position += count
    return out


def _pair(record: dict, counts: Counter) -> dict | None:
    """Best against worst among the usable samples (not empty, scored); None, counted, when there is no pair."""
    samples = record["samples"]
    counts["samples"] += len(samples)
    counts["unfinished_samples"] += sum(not s["finished"] for s in samples)
    usable = []
    for i, s in enumerate(samples):
        if not s["text"]:
            counts["empty_samples"] += 1
        elif math.isnan(s["reward"]):
            counts["unscored_samples"] += 1
        else:
            usable.append(i)
    if len(usable) < 2:
        record["dropped"] = "fewer than 2 usable samples"
        counts["prompts_too_few_samples"] += 1
        return None
    best = max(usable, key=lambda i: samples[i]["reward"])
    worst = min(usable, key=lambda i: samples[i]["reward"])
    if samples[best]["reward"] == samples[worst]["reward"] or samples[best]["text"] == samples[worst]["text"]:
        record["dropped"] = "tie"
        counts["ties"] += 1
        return None
    record.update(chosen=best, rejected=worst)
    prompt = record["prompt"]
    return {"prompt": prompt, "chosen": _as_response(prompt, samples[best]["text"]),
            "rejected": _as_response(prompt, samples[worst]["text"])}


def _sample_line(record: dict) -> dict:
    """A prompt's line of samples.jsonl (JSON has no NaN: an unscored sample's reward is null)."""
    samples = [{**s, "reward": None if math.isnan(s["reward"]) else s["reward"]} for s in record["samples"]]
    return {**{k: v for k, v in record.items() if k != "index"}, "samples": samples}


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _figures(records: list[dict], pairs: list[dict], counts: Counter, k: int) -> dict[str, Any]:
    rewards = [s["reward"] for r in records for s in r["samples"]]
    chosen = [r["samples"][r["chosen"]]["reward"] for r in records if "chosen" in r]
    rejected = [r["samples"][r["rejected"]]["reward"] for r in records if "rejected" in r]
    return {"prompts": len(records), "samples_per_prompt": k, "pairs": len(pairs),
            **{key: counts[key] for key in ("samples", "empty_samples", "unscored_samples", "unfinished_samples",
                                            "ties", "prompts_too_few_samples")},
            "mean_reward": _mean(rewards), "mean_reward_chosen": _mean(chosen), "mean_reward_rejected": _mean(rejected)}


def make_pairs(recipe: Recipe, *, overwrite: bool = False) -> RunResult:
    """Sample, judge, pair and write pairs.jsonl, samples.jsonl and run.json; under several processes each samples its
    share of the prompts and the main process writes."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from transformers import set_seed

    quiet_libraries()
    os.environ.update(recipe.env)
    settings = recipe.sampling or SamplingSection()
    plan = plan_device(recipe.trainer)
    # as TRL's configs do: on CPU, several processes (torchrun) join one gloo group
    state = PartialState(cpu=plan.device == "cpu")
    if settings.engine == "vllm" and state.num_processes > 1:
        raise InputError("sampling.engine: vllm runs in one process (it batches on its own); run without --nproc")
    # output_dir checked, run.json started, output_dir locked: the lifecycle of a training run too
    with open_run(recipe, plan, state.num_processes, state.is_main_process, overwrite=overwrite) as (run, record):
        manifest = record.manifest

        # 1. prompts, read and checked before any weights load
        train_rows, eval_rows, manifest["data"] = STAGE.load_data(recipe)
        if state.is_main_process:
            run.write_recipe(recipe.resolved_yaml())
        record.update()

        # 2. the model to sample from and the judge
        tokenizer = load_tokenizer(recipe.model)
        if settings.engine == "vllm":
            path = resolve_model_path(recipe.model.name_or_path, recipe.model.trust_remote_code)
            if RunDir(path).has_adapter():
                raise InputError(f"{path} holds a LoRA adapter, which sampling.engine: vllm does not load here; "
                                 f"merge it first (dpo-cli merge-lora {path} --output DIR) or use engine: transformers")
            samples_of = functools.partial(sample_vllm, path, tokenizer, settings=settings, seed=recipe.seed,
                                           trust_remote_code=recipe.model.trust_remote_code)
            device = state.device
        else:
            model = load_causal_lm(recipe.model, recipe.quantization, plan)
            if recipe.quantization is None:
                model.to(state.device)
            model.eval()
            device = next(model.parameters()).device
            samples_of = functools.partial(sample_transformers, model, tokenizer, settings=settings)
        judge = Judge(recipe, train_rows.column_names, device)

        # 3. sample and judge: each process takes every n-th prompt, the main process gathers them in order
        set_seed(recipe.seed + state.process_index)

        def everyone(rows) -> list[dict]:
            mine = list(range(state.process_index, len(rows), state.num_processes))
            found = _sample_and_judge(rows, mine, samples_of, judge, settings)
            return sorted(gather_object(found) if state.num_processes > 1 else found, key=lambda r: r["index"])

        records = everyone(train_rows)
        held_out = everyone(eval_rows) if eval_rows is not None else None

        # 4. pair best with worst; ties and unusable samples are dropped and counted
        counts: Counter = Counter()
        pairs = [row for row in (_pair(r, counts) for r in records) if row is not None]
        figures = _figures(records, pairs, counts, settings.num_samples)
        if held_out is not None:
            rewards = [s["reward"] for r in held_out for s in r["samples"]]
            figures["heldout"] = {"prompts": len(held_out), "samples": len(rewards), "mean_reward": _mean(rewards)}
        manifest["pairs"] = figures
        if state.is_main_process:
            console.note(pairs_summary(figures))
        if not pairs:
            raise NoPairs("no pairs: every prompt's samples tied or were unusable; raise sampling.temperature or "
                          "sampling.num_samples, or give max_new_tokens room (counts in run.json)")

        # 5. write: the pairs, every sample with its reward, then run.json (completed) last
        if state.is_main_process:
            run.write_jsonl(RunDir.PAIRS, pairs)
            run.write_jsonl(RunDir.SAMPLES, [_sample_line(r) for r in records])
        record.update(status="completed", finished_at=now(), files=[RunDir.PAIRS, RunDir.SAMPLES])
    state.wait_for_everyone()  # a later stage may read the file on any process
    return RunResult(run.path, manifest, state.is_main_process)


def pairs_summary(figures: dict[str, Any]) -> str:
    """One line: what was sampled, what became pairs, what was dropped and why, the mean rewards."""
    dropped = [f"{figures[key]} {label}" for key, label in (
        ("ties", "ties"), ("prompts_too_few_samples", "prompts with fewer than 2 usable samples"),
        ("empty_samples", "empty samples"), ("unscored_samples", "samples no reward function scored"))
        if figures.get(key)]
    line = (f"pairs: {figures['pairs']} written from {figures['prompts']} prompts x {figures['samples_per_prompt']} "
            f"samples; dropped: {', '.join(dropped) if dropped else 'none'}; {figures['unfinished_samples']} samples "
            "cut at max_new_tokens")
    if figures.get("mean_reward") is not None:
        line += f"; mean reward {figures['mean_reward']:+.4f}"
        if figures.get("mean_reward_chosen") is not None:
            line += f" (chosen {figures['mean_reward_chosen']:+.4f}, rejected {figures['mean_reward_rejected']:+.4f})"
    heldout = figures.get("heldout")
    if heldout and heldout.get("mean_reward") is not None:
        line += f"; held-out prompts {heldout['prompts']}: mean reward {heldout['mean_reward']:+.4f}"
    return line


STAGE = DataStage(
    name="pairs",
    data_kind="prompt",
    data_expects=PROMPT_DATA,
    make_data=make_pairs,
    reference=lambda recipe: ReferencePlan("none", "none: pairs samples and judges, it trains nothing"),
    uses_reward=True,
    validate=validate,
    sampling=sampling,
    no_images=lambda: "it samples completions from a text model (a causal LM) only",
)
