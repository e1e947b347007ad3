"""PNG training curves from a run's metrics.jsonl (and its held-out margins from run.json), drawn with matplotlib."""

from __future__ import annotations

import math
from pathlib import Path

from dpo_cli.core import console
from dpo_cli.core.atomic import atomic_path
from dpo_cli.core.errors import InputError
from dpo_cli.core.rundir import RunDir

# File stem -> (title, train keys); each plot also draws the eval_ twin of every key when it was logged.
CURVES = {
    "loss": ("loss", ["loss"]),
    "rewards": ("implicit rewards", ["rewards/chosen", "rewards/rejected"]),
    "margins": ("reward margin (chosen - rejected)", ["rewards/margins"]),
    "accuracies": ("preference accuracy", ["rewards/accuracies"]),
    "logps": ("log-probs of the responses", ["logps/chosen", "logps/rejected"]),
    "learning_rate": ("learning rate", ["learning_rate"]),
    # online stages: GRPO logs reward and kl, PPO objective/* and loss/*
    "sample_rewards": ("reward of the policy's samples", ["reward", "objective/scores", "objective/rlhf_reward"]),
    "kl": ("KL to the reference", ["kl", "objective/kl"]),
    "ppo_losses": ("PPO losses", ["loss/policy_avg", "loss/value_avg"]),
}
MIN_POINTS = 2  # a curve of one logged point says nothing (and matplotlib's import and a figure cost a second)
# Eval figures that say nothing about the model.
_EVAL_NOISE = ("runtime", "samples_per_second", "steps_per_second", "num_tokens", "model_preparation_time")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(record.get("step", len(steps)))
            values.append(float(value))
    return steps, values


def _ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, as TensorBoard's smoothing slider (and LLaMA-Factory's plot_loss) draw it."""
    out, last = [], values[0]
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out


def _figure():
    # The Figure API needs no pyplot and no global backend: safe inside a training process and without a display.
    from matplotlib.figure import Figure

    # no layout engine: constrained layout costs about a second per figure on a small CPU
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    return fig


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _curve(records: list[dict], title: str, keys: list[str], path: Path) -> Path | None:
    lines = []
    for key in keys:
        for label, series_key, style in ((key, key, "-"), (f"eval {key}", f"eval_{key}", "--")):
            steps, values = _series(records, series_key)
            if steps:
                lines.append((label, steps, values, style))
    if max((len(steps) for _, steps, _, _ in lines), default=0) < MIN_POINTS:
        return None
    fig = _figure()
    ax = fig.subplots()
    for i, (label, steps, values, style) in enumerate(lines):
        color = f"C{i}"
        if style == "-" and len(values) >= 30:  # fewer points: smoothing would only lag
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=1)
            ax.plot(steps, _ema(values, 0.6), color=color, label=f"{label} (smoothed)")
        else:
            ax.plot(steps, values, style, color=color, marker="o" if len(values) < 30 else None, markersize=3,
                    label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    _integer_steps(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _eval_grid(records: list[dict], path: Path) -> Path | None:
    drawn = {f"eval_{k}" for _, keys in CURVES.values() for k in keys}
    keys = sorted({k for r in records if r.get("split") == "eval" for k in r
                   if k.startswith("eval_") and not k.endswith(_EVAL_NOISE) and k not in drawn})
    keys = [k for k in keys if len(_series(records, k)[0]) >= MIN_POINTS]
    if not keys:
        return None
    from matplotlib.figure import Figure

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.97, top=1 - 0.5 / (2.4 * rows), bottom=0.25 / rows, hspace=0.5, wspace=0.35)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = _series(records, key)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(key[len("eval_"):], fontsize="small")
        ax.tick_params(labelsize="x-small")
        _integer_steps(ax)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("other eval metrics by step")
    return _save(fig, path)


def _heldout_margins(evaluation: dict | None, path: Path) -> Path | None:
    """Histogram of per-pair reward margins on the held-out pairs after training."""
    try:
        after = evaluation["after"]
        histogram = after["margin_histogram"]
    except (KeyError, TypeError):
        return None
    edges, counts = histogram["edges"], histogram["counts"]
    fig = _figure()
    ax = fig.subplots()
    ax.stairs(counts, edges, fill=True, alpha=0.7)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_title(f"held-out reward margins after training ({after.get('pairs', sum(counts))} pairs)")
    ax.set_xlabel("margin: reward(chosen) - reward(rejected)")
    ax.set_ylabel("pairs")
    return _save(fig, path)


def plot_run(run_dir: str | Path | RunDir, evaluation: dict | None = None) -> list[Path]:
    """Write one PNG per curve found in ``RUN_DIR/metrics.jsonl`` into ``RUN_DIR/plots``; return their paths.

    ``evaluation`` is run.json's before/after figures (read from run.json when not given).
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if evaluation is None:
        evaluation = (run.manifest_or_none() or {}).get("evaluation")
    records = run.metrics()
    out = run.plots_dir
    written = [_curve(records, title, keys, out / f"{stem}.png") for stem, (title, keys) in CURVES.items()]
    written += [_eval_grid(records, out / "eval.png"), _heldout_margins(evaluation, out / "heldout_margins.png")]
    written = [p for p in written if p is not None]
    if not written and not records:
        raise InputError(f"{run.metrics_file} holds no logged metrics to plot (is trainer.logging_steps larger than "
                         "the run?)")
    if not written:
        raise InputError(f"{run.metrics_file}: no metric was logged at two steps or more, so there is no curve to "
                         "draw (a smaller trainer.logging_steps logs more points)")
    return written


def plot_after_training(run: RunDir, evaluation: dict | None = None) -> list[str]:
    """plot_run at the end of training: a plotting failure is a warning, never a failed run; a run too short for a
    curve (one logged step) simply has none."""
    try:
        records = run.metrics()
        if not evaluation and all(len(_series(records, k)[0]) < MIN_POINTS for k in {k for r in records for k in r}):
            return []
        return [p.name for p in plot_run(run, evaluation)]
    except Exception as exc:  # noqa: BLE001 - the model is trained and saved; the curves are a convenience
        console.warn(f"no plots written ({exc}); run dpo-cli plot {run}")
        return []
