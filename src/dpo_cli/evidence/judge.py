"""A judged win rate: answers of a tuned model and its base to held-out prompts, judged pair by pair.

The judge is a reward model (higher score wins) or a causal language model asked a pairwise question in both orders
(a disagreement between the orders is a tie). The figures: wins, ties and losses, the win rate with ties counted
half and its 95 % Wilson interval, a length-controlled win rate, mean answer lengths, and the largest gains and
losses by the judge's margin.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpo_cli.core.builtins import asset_path, resolve_builtin
from dpo_cli.core.errors import DpoCliError, InputError
from dpo_cli.core.rundir import RunDir

TEMPLATE = "judge/pairwise.txt"  # the question a judge language model is asked, shipped in assets/
PLACEHOLDERS = ("{prompt}", "{answer_a}", "{answer_b}")
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
TOP = 5  # prompts shown with the largest gains and losses


@dataclass
class JudgeSettings:
    """How the answers are generated and how many prompts; recorded with the result so it can be repeated."""

    n: int = 100
    max_new_tokens: int = 128
    sample: bool = False  # greedy by default: the same answers every time
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0  # with sample: prompt i is sampled with seed + i, the same for both models


# --- the figures (no torch) -------------------------------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a share ``successes / n`` (successes may be fractional: ties count half)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def length_controlled_win_rate(outcomes: list[float], length_differences: list[float], *, ridge: float = 1e-4,
                               iterations: int = 100) -> float:
    """The win rate at zero length difference, as AlpacaEval's length-controlled win rate defines it.

    A logistic regression of the outcome (1 win, 0.5 tie, 0 loss) on the length difference (tuned minus base, divided
    by its standard deviation), fitted by Newton's method; the prediction at a difference of zero is
    sigmoid(intercept). A tiny ridge keeps the fit finite when the lengths separate wins from losses.
    """
    n = len(outcomes)
    if n == 0:
        return 0.5
    mean = sum(outcomes) / n
    if all(o == outcomes[0] for o in outcomes):
        return mean  # nothing to regress: every prompt had the same outcome
    spread = math.sqrt(sum(d * d for d in length_differences) / n)  # about zero: a difference of 0 is the point
    if spread == 0:
        return mean  # no length difference anywhere: the win rate is already length-controlled
    xs = [d / spread for d in length_differences]
    a = b = 0.0
    for _ in range(iterations):
        # gradient and Hessian of the penalised log-likelihood in (a, b)
        ga, gb = -ridge * a, -ridge * b
        haa, hab, hbb = ridge, 0.0, ridge
        for x, y in zip(xs, outcomes):
            p = _sigmoid(a + b * x)
            w = p * (1 - p)
            ga += y - p
            gb += (y - p) * x
            haa += w
            hab += w * x
            hbb += w * x * x
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a + da, b + db
        if abs(da) < 1e-10 and abs(db) < 1e-10:
            break
    return _sigmoid(a)


def summarise(outcomes: list[float], margins: list[float], tuned_lengths: list[int], base_lengths: list[int]
              ) -> dict[str, Any]:
    """Counts, win rate (ties half), its Wilson interval, the length-controlled rate and mean lengths."""
    n = len(outcomes)
    wins, ties = sum(o == 1 for o in outcomes), sum(o == 0.5 for o in outcomes)
    score = wins + ties / 2
    low, high = wilson_interval(score, n)
    return {
        "prompts": n, "wins": wins, "ties": ties, "losses": n - wins - ties,
        "win_rate": score / n if n else None,
        "interval": {"low": low, "high": high, "level": 0.95,
                     "method": "Wilson score interval on the win share, ties counted half"},
        "length_controlled_win_rate": length_controlled_win_rate(
            outcomes, [t - b for t, b in zip(tuned_lengths, base_lengths)]),
        "mean_length": {"tuned": sum(tuned_lengths) / n if n else None,
                        "base": sum(base_lengths) / n if n else None, "unit": "tokens"},
        "mean_margin": sum(margins) / n if n else None,
    }


def outcome_of(margin: float) -> float:
    return 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5


def combine_orders(tuned_first: float, tuned_second: float) -> tuple[float, float]:
    """(outcome, margin) of a pair asked in both orders; each argument is the judge's preference for the tuned answer
    (log-odds, positive: tuned). The orders must agree for a win or a loss; a disagreement is a tie."""
    first, second = outcome_of(tuned_first), outcome_of(tuned_second)
    return (first if first == second else 0.5), (tuned_first + tuned_second) / 2


# --- the judge --------------------------------------------------------------------------------------------------------


def _judge_config(path: str):
    from transformers import AutoConfig

    from dpo_cli.train.models import loading, resolve_model_path

    with loading(path):
        return AutoConfig.from_pretrained(resolve_model_path(path))


def judge_kind(path: str) -> str:
    """``reward`` or ``lm``, from the checkpoint's configuration (its architectures, else its model type), never its
    name; anything else is an InputError."""
    if RunDir(path).has_adapter():
        task = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
        if task in ("SEQ_CLS", "CAUSAL_LM"):
            return "reward" if task == "SEQ_CLS" else "lm"
        raise InputError(f"--judge {path}: a LoRA adapter for task {task}; a judge is a reward model (SEQ_CLS) or a "
                         "causal language model (CAUSAL_LM)")
    config = _judge_config(path)
    architectures = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        if getattr(config, "num_labels", 1) != 1:
            raise InputError(f"--judge {path}: a sequence classifier with {config.num_labels} labels; a reward model "
                             "has one output (a score)")
        return "reward"
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return "lm"
    if not architectures:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return "lm"
    raise InputError(f"--judge {path} is neither a reward model (a ...ForSequenceClassification with one output) nor "
                     f"a causal language model (its architecture: {', '.join(architectures) or config.model_type})")


def read_template(path: str | None) -> tuple[str, str]:
    """(template text, where it came from); a user's template must hold every placeholder."""
    source = Path(path) if path else asset_path(TEMPLATE)
    if not source.is_file():
        raise InputError(f"--judge-template {source}: no such file")
    text = source.read_text(encoding="utf-8")
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise InputError(f"{source}: the judge template lacks {', '.join(missing)} (it needs "
                         f"{', '.join(PLACEHOLDERS)})")
    return text, str(path) if path else f"builtin {TEMPLATE}"


def fill(template: str, prompt: str, answer_a: str, answer_b: str) -> str:
    # replace, not str.format: answers are free text and may hold braces
    return template.replace("{prompt}", prompt).replace("{answer_a}", answer_a).replace("{answer_b}", answer_b)


class RewardJudge:
    """A sequence-classification reward model: each answer gets a score, the margin is tuned minus base."""

    kind = "reward"

    def __init__(self, path: str):
        from dpo_cli.evidence.evaluate import to_device
        from dpo_cli.recipe.schema import ModelSection
        from dpo_cli.train.models import load_sequence_classifier, load_tokenizer, loading

        self.tokenizer = load_tokenizer(ModelSection(name_or_path=path))
        if RunDir(path).has_adapter():
            from peft import AutoPeftModelForSequenceClassification

            with loading(path):
                model = AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1)
        else:
            model = load_sequence_classifier(ModelSection(name_or_path=path))
        self.model = to_device(model)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _rows(self, prompts, answers) -> list[dict]:
        rows = []
        for prompt, answer in zip(prompts, answers):
            if isinstance(prompt, str) and self.tokenizer.chat_template:
                prompt = [{"role": "user", "content": prompt}]
            response = answer if isinstance(prompt, str) else [{"role": "assistant", "content": answer}]
            rows.append({"prompt": prompt, "response": response})
        return rows

    def margins(self, prompts, tuned, base) -> list[dict[str, Any]]:
        from dpo_cli.train.scoring import Truncation, encode_pairs, score_sequences

        scores = {}
        for side, answers in (("tuned", tuned), ("base", base)):
            sequences, _ = encode_pairs(self.tokenizer, self._rows(prompts, answers), Truncation(None), ("response",),
                                        keep_all=True)
            scores[side] = score_sequences(self.model, self.tokenizer, sequences).tolist()
        out = []
        for t, b, a_t, a_b in zip(scores["tuned"], scores["base"], tuned, base):
            margin = 0.0 if a_t == a_b else t - b  # the same answer is a tie, whatever padding does to the score
            out.append({"outcome": outcome_of(margin), "margin": margin, "score_tuned": t, "score_base": b})
        return out


class LanguageModelJudge:
    """A causal LM asked the template's question in both orders; its answer is the option (A or B) it gives the higher
    probability as the reply, so a verdict never fails to parse and is the same every time."""

    kind = "lm"
    OPTIONS = ("A", "B")

    def __init__(self, path: str, template: str):
        from dpo_cli.evidence.evaluate import load_for_eval, to_device
        from dpo_cli.recipe.schema import ModelSection
        from dpo_cli.train.models import load_tokenizer

        self.tokenizer = load_tokenizer(ModelSection(name_or_path=path))
        self.model = to_device(load_for_eval(path)).eval()
        self.template = template
        self.option_ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in self.OPTIONS]

    def _question_ids(self, prompt, answer_a: str, answer_b: str) -> list[int]:
        from dpo_cli.evidence.compare import encode_prompt, prompt_text

        return encode_prompt(self.tokenizer, fill(self.template, prompt_text(prompt), answer_a, answer_b), as_chat=True)

    def preference(self, prompt, answer_a: str, answer_b: str) -> float:
        """log P(reply A) - log P(reply B) after the question: positive means the judge prefers answer A."""
        import torch

        context = self._question_ids(prompt, answer_a, answer_b)
        device = next(self.model.parameters()).device
        logps = []
        for option in self.option_ids:
            ids = torch.tensor([context + option], device=device)
            with torch.no_grad():
                logits = self.model(input_ids=ids).logits[0, len(context) - 1:-1].float()
            logps.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(option, device=device)[:, None]).sum()
                         .item())
        return logps[0] - logps[1]

    def margins(self, prompts, tuned, base) -> list[dict[str, Any]]:
        out = []
        for prompt, t, b in zip(prompts, tuned, base):
            if t == b:
                out.append({"outcome": 0.5, "margin": 0.0, "tuned_first": 0.0, "tuned_second": 0.0,
                            "verdicts": ["same answer", "same answer"]})
                continue
            tuned_first = self.preference(prompt, t, b)  # tuned is A
            tuned_second = -self.preference(prompt, b, t)  # tuned is B
            outcome, margin = combine_orders(tuned_first, tuned_second)
            out.append({"outcome": outcome, "margin": margin, "tuned_first": tuned_first,
                        "tuned_second": tuned_second,
                        "verdicts": [self._letter(tuned_first, "A", "B"), self._letter(tuned_second, "B", "A")]})
        return out

    @staticmethod
    def _letter(preference_for_tuned: float, tuned: str, base: str) -> str:
        return tuned if preference_for_tuned > 0 else base if preference_for_tuned < 0 else "none"


def load_judge(path: str, kind: str, template: str | None = None):
    """(the judge, where a judge LM's template came from)."""
    if kind == "reward":
        return RewardJudge(path), None
    text, source = read_template(template)
    return LanguageModelJudge(path, text), source


# --- the answers ------------------------------------------------------------------------------------------------------


@dataclass
class JudgeTarget:
    """What is judged: the tuned run, what it is judged against, and on which prompts."""

    run: RunDir
    against: str  # a model or run directory; by default the run's starting model
    against_tokenizer: Any  # a ModelSection: the run's recipe model section, or --against's own
    prompts: list[Any]
    prompts_source: str
    also: list[str] = field(default_factory=list)  # more opponents, each judged on the same prompts (base, ...)


def open_run(run_dir: str) -> RunDir:
    """A finished run directory, or an InputError saying why not."""
    run = RunDir(run_dir)
    if not run.is_run():
        raise InputError(f"{run_dir} is not a dpo-cli run directory (no {RunDir.MANIFEST} and {RunDir.RECIPE}); "
                         "--judge judges a run that dpo-cli train wrote")
    if not run.has_weights():
        raise InputError(f"run directory {run} holds no saved model (run status: "
                         f"{(run.manifest_or_none() or {}).get('status')})")
    return run


def resolve(run: RunDir, *, against: str | None = None, prompts: str | None = None, data: str | None = None,
            n: int = 100, also: list[str] | tuple = ()) -> JudgeTarget:
    """The model the run is judged against and the prompts; one clear error for each bad input."""
    from dpo_cli.evidence.compare import read_prompts
    from dpo_cli.recipe.schema import ModelSection
    from dpo_cli.train.recipe_load import load_recipe

    if prompts and data:
        raise InputError("give at most one of --prompts FILE or --data FILE")
    recipe = load_recipe(run.recipe_file)
    if against:
        section = ModelSection(name_or_path=against)
    else:
        section, against = recipe.model, recipe.model.name_or_path
    if prompts:
        texts, source = read_prompts(prompts, n), str(prompts)
    elif data:
        texts, source = _data_prompts([data], n, data), str(data)
    else:
        texts, source = _run_prompts(recipe, n, run)
    return JudgeTarget(run, against, section, texts, source, list(also))


def _data_prompts(sources, n: int, name: str) -> list[Any]:
    from dpo_cli.core.errors import DataError
    from dpo_cli.data.load import load_training_data

    rows, _ = load_training_data(sources, "prompt")
    if len(rows) == 0:
        raise DataError("no prompts", file=name)
    _text_only(rows, name)
    return [rows[i]["prompt"] for i in range(min(n, len(rows)))]


def _text_only(rows, source: str) -> None:
    """The judge answers and judges text: prompts with images are refused rather than judged without their images."""
    from dpo_cli.train.vision import has_images

    if has_images(rows.column_names):
        raise InputError(f"the prompts of {source} have images, and the judged win rate reads text prompts only; "
                         "dpo-cli compare shows generations for prompts with images")


def _run_prompts(recipe, n: int, run: RunDir) -> tuple[list[Any], str]:
    """The prompts of the run's held-out data: data.eval, or data.eval_split drawn again with the run's seed."""
    from dpo_cli.data.load import load_splits
    from dpo_cli.train.stages import get_stage

    # quiet: what the data loader notes about these rows was said when the run trained on them
    _, rows, info = load_splits(recipe.data, recipe.seed, get_stage(recipe.stage).data_kind, quiet=True)
    if rows is None or len(rows) == 0:
        raise InputError(f"run {run} has no held-out data (no data.eval nor data.eval_split in its recipe): pass "
                         "--prompts FILE or --data FILE")
    files = info["eval"].get("files") or []
    # a source object ({path, limit, ...}) is named by what it reads
    source = ", ".join(f if isinstance(f, str) else str(f.get("path") or f.get("hub") or f.get("name") or f)
                       for f in files) or f"{info['eval']['split_of_train']:.0%} split of the training data"
    _text_only(rows, source)
    return [rows[i]["prompt"] for i in range(min(n, len(rows)))], source


def _answers(path: str, tokenizer, prompts: list[Any], settings: JudgeSettings) -> list[str]:
    """One answer per prompt from the model at ``path``; with sampling, prompt i is sampled with seed + i."""
    import torch

    from dpo_cli.evidence.compare import Settings, encode_prompt, generate_answer
    from dpo_cli.evidence.evaluate import load_for_eval

    model = load_for_eval(path).to("cuda" if torch.cuda.is_available() else "cpu").eval()
    answers = []
    for i, prompt in enumerate(prompts):
        per_prompt = Settings(settings.max_new_tokens, settings.temperature, settings.top_p, settings.seed + i)
        answers.append(generate_answer(model, tokenizer, encode_prompt(tokenizer, prompt, as_chat=True), per_prompt,
                                 sample=settings.sample))
    del model  # one model in memory at a time
    return answers


def judge_run(target: JudgeTarget, judge_path: str, settings: JudgeSettings, *, template: str | None = None
              ) -> list[dict[str, Any]]:
    """Generate, judge every pair, and return one result per opponent (``target.against``, then ``target.also``) as
    run.json records it; every prompt's answers and scores go to judge.jsonl (judge-also-N.jsonl for the others)."""
    from dpo_cli.recipe.schema import ModelSection
    from dpo_cli.train.models import load_tokenizer, quiet_libraries

    quiet_libraries()
    kind = check_judge(judge_path, template)
    tuned_tokenizer = load_tokenizer(ModelSection(name_or_path=str(target.run)))
    tuned = _answers(str(target.run), tuned_tokenizer, target.prompts, settings)  # once, for every opponent
    opponents = [(target.against, target.against_tokenizer),
                 *((name, ModelSection(name_or_path=name)) for name in target.also)]
    others = [_answers(resolve_builtin(name), load_tokenizer(section), target.prompts, settings)
              for name, section in opponents]
    judge, template_source = load_judge(judge_path, kind, template)  # after generating: one model in memory at once
    description = {"path": judge_path, "kind": kind, **({"template": template_source} if template_source else {}),
                   "margin": "reward(tuned) - reward(other)" if kind == "reward" else
                   "mean over the two orders of log P(tuned's letter) - log P(other's letter)"}
    if kind == "lm":
        description["orders"] = "both (tuned as A, then as B); a disagreement is a tie"
    results = []
    for i, ((name, _), other) in enumerate(zip(opponents, others)):
        rows_file = RunDir.JUDGE if i == 0 else RunDir.JUDGE.replace(".jsonl", f"-also-{i}.jsonl")
        result = _result(target, tuned, other, judge.margins(target.prompts, tuned, other), tuned_tokenizer)
        result.update(tuned=str(target.run), against=name, prompts_source=target.prompts_source, judge=description,
                      settings={"decoding": "sampled" if settings.sample else "greedy", **asdict(settings)},
                      rows_file=rows_file)
        target.run.write_jsonl(rows_file, result.pop("rows"))
        results.append(result)
    return results


def _result(target: JudgeTarget, tuned: list[str], other: list[str], judged: list[dict], tokenizer) -> dict[str, Any]:
    """The figures of one opponent, with its largest gains and losses; ``rows``: every prompt, for judge.jsonl."""
    from dpo_cli.evidence.compare import prompt_text

    def length(text: str) -> int:  # both sides in the tuned tokenizer's tokens, so they compare
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows = [{"prompt": p, "tuned": t, "base": b, "tuned_tokens": length(t), "base_tokens": length(b), **j}
            for p, t, b, j in zip(target.prompts, tuned, other, judged)]
    result = summarise([r["outcome"] for r in rows], [r["margin"] for r in rows], [r["tuned_tokens"] for r in rows],
                       [r["base_tokens"] for r in rows])
    by_margin = sorted(range(len(rows)), key=lambda i: rows[i]["margin"])

    def shown(i: int) -> dict[str, Any]:
        r = rows[i]
        return {"prompt": prompt_text(r["prompt"]), "tuned": r["tuned"], "base": r["base"], "margin": r["margin"],
                "outcome": r["outcome"]}

    result.update(largest_gains=[shown(i) for i in reversed(by_margin[-TOP:]) if rows[i]["margin"] > 0],
                  largest_losses=[shown(i) for i in by_margin[:TOP] if rows[i]["margin"] < 0], rows=rows)
    return result


def record(run: RunDir, results: list[dict[str, Any]]) -> None:
    """Into run.json, atomically, leaving every other figure as it was: evaluation.judge holds the result against the
    starting model (or --against), evaluation.judge_also the others (dropped when this judgement has none)."""
    manifest = run.manifest()
    evaluation = manifest.setdefault("evaluation", {})
    evaluation["judge"] = results[0]
    if len(results) > 1:
        evaluation["judge_also"] = results[1:]
    else:
        evaluation.pop("judge_also", None)
    run.write_manifest(manifest)


def evaluate_with_judge(run_dir: str, judge_path: str, settings: JudgeSettings, *, against: str | None = None,
                        prompts: str | Path | None = None, data: str | None = None, template: str | None = None,
                        also: list[str] | tuple = ()) -> list[dict[str, Any]]:
    """``dpo-cli eval RUN --judge JUDGE``: judge the run, record the results in its run.json, return them (the one
    against the starting model or ``against`` first, then one per ``also``)."""
    run = open_run(run_dir)
    check_judge(judge_path, template)  # before any data is read or model loaded: a bad judge is said at once
    target = resolve(run, against=against, prompts=str(prompts) if prompts else None, data=data, n=settings.n,
                     also=also)
    results = judge_run(target, judge_path, settings, template=template)
    record(target.run, results)
    return results


def settings_of(section) -> JudgeSettings:
    """The generation settings of a recipe's eval: section."""
    return JudgeSettings(n=section.n, max_new_tokens=section.max_new_tokens, sample=section.sample,
                         temperature=section.temperature, top_p=section.top_p, seed=section.seed)


def check_judge(judge_path: str, template: str | None = None) -> str:
    """The judge's kind, once it is known to be usable: a reward model takes no template, a judge LM's template holds
    every placeholder."""
    kind = judge_kind(judge_path)
    if kind == "reward" and template is not None:
        raise InputError(f"a judge template is for a judge language model; {judge_path} is a reward model")
    if kind == "lm":
        read_template(template)
    return kind


def check_before_training(section) -> None:
    """A recipe's eval: section, checked before any weights load, so a typo does not cost a training run: the judge and
    its template, the opponents and the prompts file (its first prompt is read)."""
    from dpo_cli.evidence.compare import read_prompts
    from dpo_cli.train.models import resolve_model_path

    check_judge(section.judge, section.template)
    for name in filter(None, [section.against, *section.also_against]):
        resolve_model_path(name)
    if section.prompts:
        read_prompts(section.prompts, 1)
    if section.data and not section.data.startswith(("hub:", "builtin:")) and not Path(section.data).exists():
        raise InputError(f"eval.data {section.data}: no such file or directory")


def judge_after_training(recipe, manifest: dict[str, Any]) -> None:
    """A recipe's eval.judge, once the run is saved and complete: into run.json and ``manifest`` (the console table)."""
    from dpo_cli.core import console

    section = recipe.eval
    opponents = ", ".join([section.against or recipe.model.name_or_path, *section.also_against])
    console.note(f"judging the trained model against {opponents} with "
                 f"{section.judge} on up to {section.n} prompts")
    try:
        results = evaluate_with_judge(recipe.output_dir, section.judge, settings_of(section), against=section.against,
                                      prompts=section.prompts, data=section.data, template=section.template,
                                      also=section.also_against)
    except DpoCliError as exc:  # say that the training itself is done and kept
        raise type(exc)(f"training completed in {recipe.output_dir}, but eval.judge failed: {exc}") from exc
    evaluation = manifest.setdefault("evaluation", {})
    evaluation["judge"] = results[0]
    if len(results) > 1:
        evaluation["judge_also"] = results[1:]
