"""The bad-input catalogue: every input dpo-cli refuses, the command, and the exact message it prints.

tests/test_catalogue.py runs each case; scripts/make_error_catalogue.py writes docs/errors.md from the same list, so
the page can never drift from what the program says. In files, argv and messages ``{tmp}`` is the case's directory.
"""

from __future__ import annotations

import errno
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GOOD_RECIPE = """\
stage: dpo
model:
  name_or_path: builtin:tiny-chat
data:
  train: {tmp}/train.jsonl
trainer:
  beta: 0.1
output_dir: {tmp}/run
"""
PAIR = '{"prompt": "Hi?", "chosen": "Hello! How can I help?", "rejected": "Go away."}\n'
# The config.json of a small Llama, for cases about a model directory whose other files are broken
TINY_LLAMA = ('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 2003, "hidden_size": 64, '
              '"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, '
              '"max_position_embeddings": 512, "tie_word_embeddings": true}')


@dataclass(frozen=True)
class Special:
    """A file the case makes that is not plain content: a named pipe (``Special("fifo")``) or a symbolic link to
    ``target`` (``Special("link", "/dev/zero")``)."""

    kind: str
    target: str = ""


FIFO = Special("fifo")


@dataclass
class Case:
    name: str
    area: str  # recipe, option, data, model, run
    what: str
    argv: list[str]
    message: str
    # a name ending in "/" is an empty directory
    files: dict[str, str | bytes | Special] = field(default_factory=dict)
    exit_code: int = 2
    timeout: int | None = None  # a case that hung once runs in its own process, stopped after this many seconds
    # a fault no file can make (a full disk): called with pytest's monkeypatch and the case's directory before the run
    fault: Callable[[Any, Any], None] | None = None


def recipe_with(old: str, new: str, **files: str) -> dict[str, str]:
    return {"r.yaml": GOOD_RECIPE.replace(old, new), "train.jsonl": PAIR, **files}


TRAIN = ["train", "{tmp}/r.yaml"]
USER, ASSISTANT = {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}
IMAGE_USER = {"role": "user", "content": "<image>What is it?"}  # LLaMA-Factory's placeholder for the row's image
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSu"
       "QmCC")  # one red pixel
HUMAN, GPT = {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}
REGISTRY = json.dumps({"dpo_en_demo": {"file_name": "dpo_en_demo.json", "formatting": "sharegpt", "ranking": True},
                       "dpo_mix_en": {"hf_hub_url": "llamafactory/DPO-En-Zh-20k", "ranking": True}})
PROMPT = '{"prompt": "What is 2+2?"}\n'
PAIRS_RECIPE = """\
stage: pairs
model:
  name_or_path: builtin:tiny-chat
data:
  train: {tmp}/train.jsonl
reward:
  functions: [length]
sampling:
  num_samples: 4
output_dir: {tmp}/run
"""
ONLINE_RECIPE = PAIRS_RECIPE.replace("stage: pairs", "stage: online-dpo").replace(
    "sampling:\n  num_samples: 4\n", "trainer:\n  max_steps: 2\n")
CONVERT = ["convert-data", "{tmp}/in.jsonl", "-o", "{tmp}/out.jsonl"]
GOOD_ROW = '{"prompt": "Q", "chosen": "A", "rejected": "B"}\n'

# a run directory as dpo-cli train leaves it, as far as the checks before any weights load look
JUDGED_RUN = {"run/run.json": '{"status": "completed", "stage": "dpo"}', "run/recipe.resolved.yaml": GOOD_RECIPE,
              "run/config.json": TINY_LLAMA, "train.jsonl": PAIR}

CASES = [
    Case("recipe-missing", "recipe", "the recipe file does not exist", ["train", "{tmp}/nope.yaml"],
         "recipe file not found: {tmp}/nope.yaml"),
    Case("yaml-syntax", "recipe", "YAML that does not parse", TRAIN,
         "{tmp}/r.yaml:4: YAML syntax error at column 1: expected ',' or ']', but got '<stream end>'",
         {"r.yaml": "stage: dpo\nmodel:\n  name_or_path: [tiny\n"}),
    Case("recipe-not-mapping", "recipe", "a recipe that is a list, not sections", TRAIN,
         "{tmp}/r.yaml:1: a recipe must be a mapping of sections (stage:, model:, data:, trainer:, ...)",
         {"r.yaml": "- stage: dpo\n"}),
    Case("unknown-stage", "recipe", "a stage name dpo-cli does not have", TRAIN,
         "{tmp}/r.yaml:1: field 'stage': unknown stage 'dop'; did you mean 'dpo'?",
         recipe_with("stage: dpo", "stage: dop")),
    Case("unknown-section", "recipe", "a top-level key that is not a section", TRAIN,
         "{tmp}/r.yaml:9: field 'sed': unknown key 'sed'; did you mean 'seed'?",
         recipe_with("output_dir: {tmp}/run\n", "output_dir: {tmp}/run\nsed: 3\n")),
    Case("unknown-key", "recipe", "a key a section does not have", TRAIN,
         "{tmp}/r.yaml:4: field 'model.dtyp': unknown key 'dtyp'; did you mean 'dtype'?",
         recipe_with("  name_or_path: builtin:tiny-chat\n", "  name_or_path: builtin:tiny-chat\n  dtyp: bfloat16\n")),
    Case("missing-section", "recipe", "a required section left out", TRAIN,
         "{tmp}/r.yaml: field 'data': required key is missing",
         {"r.yaml": "stage: dpo\nmodel:\n  name_or_path: builtin:tiny-chat\n"}),
    Case("missing-key", "recipe", "a required key left out", TRAIN,
         "{tmp}/r.yaml:2: field 'model.name_or_path': required key is missing",
         recipe_with("  name_or_path: builtin:tiny-chat\n", "  dtype: auto\n")),
    Case("wrong-type", "recipe", "a value of the wrong type", TRAIN,
         "{tmp}/r.yaml:9: field 'seed': Input should be a valid integer, unable to parse string as an integer "
         "(got 'lots')", recipe_with("output_dir: {tmp}/run\n", "output_dir: {tmp}/run\nseed: lots\n")),
    Case("wrong-choice", "recipe", "a value outside the allowed choices", TRAIN,
         "{tmp}/r.yaml:4: field 'model.dtype': Input should be 'auto', 'float32', 'bfloat16' or 'float16' "
         "(got 'fp8')",
         recipe_with("  name_or_path: builtin:tiny-chat\n", "  name_or_path: builtin:tiny-chat\n  dtype: fp8\n")),
    Case("trainer-unknown-field", "recipe", "a trainer: key the stage's TRL config lacks", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.betta': DPOConfig has no field 'betta'; did you mean 'beta'?",
         recipe_with("beta: 0.1", "betta: 0.1")),
    Case("trainer-wrong-type", "recipe", "a trainer: value of the wrong type", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.beta': Input should be a valid number, unable to parse string as a number "
         "(got 'high')", recipe_with("beta: 0.1", "beta: high")),
    Case("trainer-owned-key", "recipe", "a TRL field the recipe sets elsewhere", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.output_dir': 'output_dir' is not a trainer key here: set output_dir at "
         "the top level of the recipe", recipe_with("beta: 0.1", "output_dir: /elsewhere")),
    Case("trl-cross-field", "recipe", "trainer: values TRL rejects together", TRAIN,
         "{tmp}/r.yaml:8: field 'trainer.loss_weights': DPOConfig rejected the trainer: section: `loss_weights` must "
         "have the same length as `loss_type` when combining multiple losses. Got 1 weights for 2 loss types.",
         recipe_with("beta: 0.1", "loss_type: [sigmoid, sft]\n  loss_weights: [1.0]")),
    Case("dpo-kto-pair", "recipe", "LLaMA-Factory's pref_loss kto_pair as a DPO loss type", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.loss_type': loss type 'kto_pair': TRL removed kto_pair from its DPO losses; "
         "for KTO use stage: kto with unpaired rows (dpo-cli convert-data --to kto, or give it pairs: it splits "
         "them), or loss_type: apo_zero for a paired alternative", recipe_with("beta: 0.1", "loss_type: kto_pair")),
    Case("simpo-other-loss", "recipe", "stage simpo given another CPO loss", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.loss_type': stage simpo sets loss_type: simpo itself; for CPO's hinge loss "
         "use stage: cpo",
         {"r.yaml": GOOD_RECIPE.replace("stage: dpo", "stage: simpo").replace("beta: 0.1", "loss_type: hinge"),
          "train.jsonl": PAIR}),
    Case("online-dpo-no-judge", "recipe", "online-dpo without a reward model or reward functions", TRAIN,
         "{tmp}/r.yaml: field 'reward': stage online-dpo needs a judge to pick chosen and rejected: reward: {model: "
         "PATH} (a reward stage's output, ${rm.output_dir} in a pipeline) or reward: {functions: [...]}",
         {"r.yaml": ONLINE_RECIPE.replace("reward:\n  functions: [length]\n", ""), "train.jsonl": PROMPT}),
    Case("judge-model-and-functions", "recipe", "a judge given as a reward model and as functions at once", TRAIN,
         "{tmp}/r.yaml:8: field 'reward.model': give reward.model or reward.functions, not both; to combine them, "
         "list the model as a function: {reward_model: PATH}",
         {"r.yaml": PAIRS_RECIPE.replace("  functions: [length]\n", "  functions: [length]\n  model: runs/rm\n"),
          "train.jsonl": PROMPT}),
    Case("pairs-one-sample", "recipe", "a pairs stage sampling fewer than 2 completions per prompt", TRAIN,
         "{tmp}/r.yaml:9: field 'sampling.num_samples': sampling.num_samples is 1: a pair needs at least 2 samples "
         "per prompt (the best and the worst); use 4 to 8",
         {"r.yaml": PAIRS_RECIPE.replace("num_samples: 4", "num_samples: 1"), "train.jsonl": PROMPT}),
    Case("pairs-trainer-section", "recipe", "a trainer: section in a stage that trains nothing", TRAIN,
         "{tmp}/r.yaml:12: field 'trainer.max_steps': stage pairs makes data and trains nothing, so it has no "
         "trainer: section; its settings go under sampling: (num_samples, temperature, max_new_tokens, batch_size)",
         {"r.yaml": PAIRS_RECIPE + "trainer:\n  max_steps: 2\n", "train.jsonl": PROMPT}),
    Case("sampling-in-a-training-stage", "recipe", "a sampling: section in a stage that trains", TRAIN,
         "{tmp}/r.yaml:8: field 'sampling': stage dpo does not use a sampling: section (pairs does); a trainer's own "
         "generation settings go under trainer:", recipe_with("output_dir:", "sampling:\n  num_samples: 4\noutput_dir:")),
    Case("eval-and-split", "recipe", "both data.eval and data.eval_split", TRAIN,
         "{tmp}/r.yaml:4: field 'data': give either data.eval or data.eval_split, not both",
         recipe_with("  train: {tmp}/train.jsonl\n",
                     "  train: {tmp}/train.jsonl\n  eval: {tmp}/train.jsonl\n  eval_split: 0.1\n")),
    Case("eval-split-range", "recipe", "an eval_split that is not a share", TRAIN,
         "{tmp}/r.yaml:6: field 'data.eval_split': Input should be less than 1 (got 5)",
         recipe_with("  train: {tmp}/train.jsonl\n", "  train: {tmp}/train.jsonl\n  eval_split: 5\n")),
    Case("override-form", "option", "an override without '='", [*TRAIN, "trainer.beta"],
         "override 'trainer.beta' is not of the form section.key=value (e.g. trainer.beta=0.2)",
         recipe_with("", "")),
    Case("override-type", "option", "an override of the wrong type", [*TRAIN, "trainer.beta=high"],
         "command-line override 'trainer.beta=high': field 'trainer.beta': Input should be a valid number, unable "
         "to parse string as a number (got 'high')", recipe_with("", "")),
    Case("override-into-value", "option", "an override below a key that is not a section",
         [*TRAIN, "seed.x=1"], "override 'seed.x=1': 'seed' is not a section",
         recipe_with("output_dir: {tmp}/run\n", "output_dir: {tmp}/run\nseed: 1\n")),
    Case("output-not-empty", "option", "a non-empty output_dir without --overwrite", TRAIN,
         "output directory {tmp}/run is not empty; pass --overwrite to write over it, or choose another with "
         "output_dir=DIR", recipe_with("", "", **{"run/keep.txt": "mine"})),
    Case("accelerate-config-unknown", "option", "an --accelerate-config that is neither a file nor shipped",
         [*TRAIN, "--accelerate-config", "zero4", "--dry-run"],
         "accelerate config 'zero4' is neither a file nor a shipped config (ddp, fsdp2, zero2, zero3, "
         "zero3-offload)", recipe_with("", "")),
    Case("accelerate-config-not-one", "option", "an --accelerate-config file that is not an Accelerate config",
         [*TRAIN, "--accelerate-config", "{tmp}/acc.yaml", "--dry-run"],
         "{tmp}/acc.yaml: not an Accelerate config (no distributed_type); make one with `accelerate config`",
         recipe_with("", "", **{"acc.yaml": "num_processes: 2\n"})),
    Case("gpu-memory-not-a-size", "option", "a --gpu-memory that is not a size",
         [*TRAIN, "--dry-run", "--gpu-memory", "lots"],
         "--gpu-memory 'lots' is not a size; write it like 24GiB, 80GB or 40960MiB", recipe_with("", "")),
    Case("plan-options-without-dry-run", "option", "--gpu-memory or --json without --dry-run",
         [*TRAIN, "--json"], "--gpu-memory and --json describe a plan: use them with --dry-run", recipe_with("", "")),
    Case("resume-nothing", "option", "--resume auto with no complete checkpoint in a folder of other files",
         [*TRAIN, "--resume", "auto"],
         "--resume auto: no complete checkpoint in {tmp}/run, and it holds files no dpo-cli run wrote (no run.json), "
         "so training cannot start over in it; choose another output_dir",
         recipe_with("", "", **{"run/checkpoint-2/x": ""})),
    Case("resume-completed", "option", "--resume auto on a completed run that kept no checkpoint",
         [*TRAIN, "--resume", "auto"],
         "--resume auto: {tmp}/run holds a completed run and no checkpoint to resume from; nothing to do (--overwrite "
         "trains it again)", recipe_with("", "", **{"run/run.json": '{"status": "completed"}'})),
    Case("nnodes-without-rank", "option", "--nnodes without this machine's --node-rank and node 0's --master",
         [*TRAIN, "--nproc", "1", "--nnodes", "2"],
         "--nnodes 2 needs this machine's --node-rank (0 to 1) and --master HOST:PORT, the address of node 0 that "
         "every node can reach", recipe_with("", "")),
    Case("master-not-host-port", "option", "a --master that is not HOST:PORT",
         [*TRAIN, "--nproc", "1", "--nnodes", "2", "--node-rank", "0", "--master", "node0"],
         "--master 'node0' is not HOST:PORT (for example 10.0.0.1:29500)", recipe_with("", "")),
    Case("resume-missing", "option", "--resume PATH that does not exist",
         [*TRAIN, "--resume", "{tmp}/run/checkpoint-9"],
         "--resume {tmp}/run/checkpoint-9: no such checkpoint directory", recipe_with("", "")),
    Case("resume-incomplete", "option", "--resume PATH of an incomplete checkpoint",
         [*TRAIN, "--resume", "{tmp}/run/checkpoint-2"],
         "--resume {tmp}/run/checkpoint-2: cannot resume from it: no completion marker (the save was interrupted)",
         recipe_with("", "", **{"run/checkpoint-2/trainer_state.json": "{}"})),
    Case("sweep-not-a-key", "option", "a --sweep key that is not a recipe key",
         [*TRAIN, "--sweep", "trainer.betta=0.05,0.1"],
         "command-line override 'trainer.betta=0.05': field 'trainer.betta': DPOConfig has no field 'betta'; did you "
         "mean 'beta'?", recipe_with("", "")),
    Case("sweep-one-value", "option", "a --sweep key with one value", [*TRAIN, "--sweep", "trainer.beta=0.2"],
         "--sweep trainer.beta=0.2: a sweep needs two values or more (trainer.beta=V1,V2,...); for one value give the "
         "override trainer.beta=0.2 instead", recipe_with("", "")),
    Case("sweep-key-twice", "option", "the same key swept twice",
         [*TRAIN, "--sweep", "trainer.beta=0.1,0.2", "--sweep", "trainer.beta=0.3,0.4"],
         "--sweep trainer.beta is given twice: list all its values in one --sweep trainer.beta=V1,V2,...",
         recipe_with("", "")),
    Case("sweep-and-override", "option", "a key both swept and set by an override",
         [*TRAIN, "trainer.beta=0.3", "--sweep", "trainer.beta=0.1,0.2"],
         "--sweep trainer.beta is also set by the override trainer.beta=0.3: keep one", recipe_with("", "")),
    Case("sweep-pipeline", "option", "--sweep on a pipeline recipe (stages:)",
         ["train", "{tmp}/p.yaml", "--sweep", "dpo.trainer.beta=0.1,0.2"],
         "{tmp}/p.yaml: --sweep runs a one-stage recipe; a pipeline (stages:) cannot be swept: sweep the stage's own "
         "recipe, or write one pipeline per value",
         {"p.yaml": "stages:\n  - name: dpo\n" + "".join("    " + line + "\n" for line in GOOD_RECIPE.splitlines()
                                                          if not line.startswith("output_dir"))}),
    Case("sweep-point-unfinished", "option", "a sweep whose point was stopped, run again without --resume auto",
         [*TRAIN, "--sweep", "trainer.beta=0.1,0.2"],
         "sweep point trainer.beta=0.1 in {tmp}/run/trainer.beta=0.1 is unfinished (run.json status interrupted): run "
         "the same command with --resume auto to continue it, or --overwrite to start it again",
         recipe_with("", "", **{"run/trainer.beta=0.1/run.json": '{"status": "interrupted"}'})),
    Case("recipe-not-utf8", "recipe", "a recipe with a byte that is not UTF-8 (Latin-1 é)", TRAIN,
         "{tmp}/r.yaml:2: not UTF-8 text: byte 0xe9 at column 26; save the recipe as UTF-8",
         {"r.yaml": b"stage: dpo\nmodel: {name_or_path: caf\xe9}\n"}),
    Case("recipe-duplicate-key", "recipe", "a key given twice in one section (the last would win silently)", TRAIN,
         "{tmp}/r.yaml:8: field 'beta': key 'beta' appears twice in the same section, at lines 7 and 8; PyYAML "
         "would keep the second without a word: remove one", recipe_with("beta: 0.1", "beta: 0.1\n  beta: 0.5")),
    *[Case(f"trainer-{name}", "recipe", what, [*TRAIN, override], message, recipe_with("", ""))
      for name, what, override, message in [
          ("batch-zero", "a batch size of 0", "trainer.per_device_train_batch_size=0",
           "command-line override 'trainer.per_device_train_batch_size=0': field "
           "'trainer.per_device_train_batch_size': must be positive (got 0)"),
          ("batch-negative", "a negative batch size", "trainer.per_device_train_batch_size=-4",
           "command-line override 'trainer.per_device_train_batch_size=-4': field "
           "'trainer.per_device_train_batch_size': must be positive (got -4)"),
          ("max-length-zero", "a max_length of 0", "trainer.max_length=0",
           "command-line override 'trainer.max_length=0': field 'trainer.max_length': must be positive (got 0)"),
          ("seed-huge", "a seed no random generator takes", "seed=99999999999999999999999",
           "command-line override 'seed=99999999999999999999999': field 'seed': Input should be less than "
           "4294967296 (got 99999999999999999999999)"),
      ]],
    Case("override-unknown-section", "option", "an override that creates a section the recipe does not have",
         [*TRAIN, "sedd.x=1"], "command-line override 'sedd.x=1': field 'sedd': unknown key 'sedd'; did you mean "
         "'seed'?", recipe_with("", "")),
    Case("chat-template-missing-file", "model", "a chat_template that names a file that is not there", TRAIN,
         "{tmp}/r.yaml:4: field 'model.chat_template': 'templates/chat.jinja' looks like a file path, but there is "
         "no such file (looked in *); give a path to a template file, or the Jinja template itself",
         recipe_with("  name_or_path: builtin:tiny-chat\n",
                     "  name_or_path: builtin:tiny-chat\n  chat_template: templates/chat.jinja\n")),
    Case("chat-template-bad-jinja", "model", "a chat_template that is not valid Jinja", TRAIN,
         "{tmp}/r.yaml:4: field 'model.chat_template': the Jinja template does not parse: Expected an expression, "
         "got 'end of statement block' (template line 1)",
         recipe_with("  name_or_path: builtin:tiny-chat\n",
                     "  name_or_path: builtin:tiny-chat\n  chat_template: '{% if %}'\n")),
    Case("output-dir-is-file", "option", "an output_dir that is a file", TRAIN,
         "output_dir {tmp}/run is a file, not a directory", recipe_with("", "", run="a file\n")),
    Case("output-dir-holds-input", "option", "an output_dir that holds the training data (--overwrite)",
         [*TRAIN, "--overwrite"], "output_dir {tmp} contains the input {tmp}/train.jsonl: replacing it would "
         "destroy what is being read; choose another path",
         recipe_with("output_dir: {tmp}/run", "output_dir: {tmp}")),
    Case("overwrite-not-ours", "option", "--overwrite into a directory dpo-cli did not write", [*TRAIN, "--overwrite"],
         "output_dir {tmp}/run is not empty and was not written by dpo-cli (no run.json in it); --overwrite only "
         "replaces dpo-cli's own output: choose an empty or new directory",
         recipe_with("", "", **{"run/notes.txt": "mine"})),
    Case("model-dir-empty", "model", "a model directory with nothing in it", TRAIN,
         "model directory {tmp}/model holds no config.json: it is not a saved model (an interrupted download or "
         "save?)", recipe_with("builtin:tiny-chat", "{tmp}/model", **{"model/": ""})),
    Case("model-weights-broken", "model", "a model whose model.safetensors is cut short or overwritten", TRAIN,
         "{tmp}/model cannot be loaded (*); is it complete (config.json, weights, tokenizer files), and saved by a "
         "compatible transformers?",
         recipe_with("  name_or_path: builtin:tiny-chat\n",
                     "  name_or_path: {tmp}/model\n  tokenizer: builtin:tiny-chat\n",
                     **{"model/config.json": TINY_LLAMA, "model/model.safetensors": "cut short"})),
    Case("eval-weights-broken", "model", "dpo-cli eval of a model whose weights are cut short",
         ["eval", "{tmp}/model", "--data", "{tmp}/train.jsonl"],
         "{tmp}/model cannot be loaded (*); is it complete (config.json, weights, tokenizer files), and saved by a "
         "compatible transformers?", {"train.jsonl": PAIR, "model/config.json": TINY_LLAMA,
                                      "model/model.safetensors": "cut short"}),
    Case("eval-negative-beta", "option", "dpo-cli eval --beta below zero",
         ["eval", "builtin:tiny-chat", "--data", "{tmp}/train.jsonl", "--beta", "-1"],
         "--beta must be positive (got -1.0): the implicit reward is beta * log-ratio", {"train.jsonl": PAIR}),
    Case("judge-run-missing", "option", "dpo-cli eval --judge of a directory that is not a run",
         ["eval", "{tmp}/nowhere", "--judge", "builtin:tiny-chat"],
         "{tmp}/nowhere is not a dpo-cli run directory (no run.json and recipe.resolved.yaml); --judge judges a run "
         "that dpo-cli train wrote"),
    Case("judge-neither-kind", "model", "a --judge that is neither a reward model nor a causal language model",
         ["eval", "{tmp}/run", "--judge", "{tmp}/encoder"],
         "--judge {tmp}/encoder is neither a reward model (a ...ForSequenceClassification with one output) nor a "
         "causal language model (its architecture: LlamaModel)",
         {**JUDGED_RUN, "encoder/config.json": TINY_LLAMA.replace("LlamaForCausalLM", "LlamaModel")}),
    Case("judge-no-prompts", "data", "dpo-cli eval --judge with a prompts file that holds no prompt",
         ["eval", "{tmp}/run", "--judge", "builtin:tiny-chat", "--prompts", "{tmp}/prompts.txt"],
         "{tmp}/prompts.txt: no prompts", {**JUDGED_RUN, "prompts.txt": "\n\n"}),
    Case("judge-options-alone", "option", "dpo-cli eval with judging options but no --judge",
         ["eval", "{tmp}/run", "-n", "5"], "-n only applies with --judge", JUDGED_RUN),
    Case("judge-reward-stage", "recipe", "eval.judge in a stage that trains no language model", TRAIN,
         "{tmp}/r.yaml:7: field 'eval.judge': stage reward makes no language model to judge: eval.judge judges the "
         "answers of a trained policy (dpo, orpo, sft, ppo, ...)",
         {"r.yaml": GOOD_RECIPE.replace("stage: dpo", "stage: reward").replace(
             "trainer:\n  beta: 0.1\n", "eval:\n  judge: builtin:tiny-chat\n  prompts: {tmp}/train.jsonl\n"),
          "train.jsonl": PAIR}),
    Case("rows-all-too-long", "data", "training rows whose prompts all fill max_length", [*TRAIN, "trainer.max_length=2"],
         "no training rows are left once TRL has prepared them: every prompt fills trainer.max_length (2), and TRL "
         "drops such rows; raise max_length or shorten the prompts (dpo-cli inspect-data --tokenizer shows the "
         "lengths)", recipe_with("", "")),
    Case("compare-no-model", "run", "dpo-cli compare on a run that stopped before saving a model",
         ["compare", "--tuned", "{tmp}/run", "--data", "{tmp}/train.jsonl"],
         "--tuned {tmp}/run holds no saved model (run status: failed); compare needs a run that finished, or a saved "
         "model", {"train.jsonl": PAIR, "run/run.json": '{"status": "failed"}',
                   "run/recipe.resolved.yaml": GOOD_RECIPE}),
    Case("report-over-run", "option", "dpo-cli report -o onto a file of the run it reads",
         ["report", "{tmp}/run", "-o", "{tmp}/run/run.json"],
         "--output {tmp}/run/run.json lies inside the input {tmp}/run; write it elsewhere",
         {"run/run.json": '{"status": "completed"}', "run/recipe.resolved.yaml": GOOD_RECIPE}),
    Case("score-over-data", "option", "dpo-cli score -o onto the data it scores",
         ["score", "builtin:tiny-chat", "--data", "{tmp}/train.jsonl", "-o", "{tmp}/train.jsonl"],
         "--output {tmp}/train.jsonl is the input {tmp}/train.jsonl: writing it would destroy what is being read; "
         "choose another path", {"train.jsonl": PAIR}),
    Case("merge-adapter-config-broken", "model", "merge-lora on a run whose adapter_config.json is not JSON",
         ["merge-lora", "{tmp}/run", "--output", "{tmp}/merged"],
         "{tmp}/run/adapter_config.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 "
         "column 2 (char 1)); the run's adapter is damaged", {"run/adapter_config.json": "{broken"}),
    Case("merge-output-is-file", "option", "merge-lora --output naming a file",
         ["merge-lora", "{tmp}/run", "--output", "{tmp}/merged", "--overwrite"],
         "--output {tmp}/merged is a file, not a directory",
         {"run/adapter_config.json": '{"base_model_name_or_path": "builtin:tiny-chat"}', "merged": "a file"}),
    Case("merge-output-holds-run", "option", "merge-lora --output a folder that holds the run",
         ["merge-lora", "{tmp}/parent/run", "--output", "{tmp}/parent", "--overwrite"],
         "--output {tmp}/parent contains the input {tmp}/parent/run: replacing it would destroy what is being "
         "read; choose another path",
         {"parent/run/adapter_config.json": '{"base_model_name_or_path": "builtin:tiny-chat"}',
          "parent/other.txt": "keep"}),
    Case("pipeline-long-cycle", "recipe", "a pipeline of 1500 stages that refer to each other in a ring", TRAIN,
         "{tmp}/r.yaml:2: field 'stages.0.name': stages refer to each other in a cycle: s0 -> s1 -> s2 -> ... -> "
         "s1498 -> s1499 -> s0 (1500 stages); a stage can only use the output of a stage before it",
         {"r.yaml": "stages:\n" + "".join(f"  - name: s{i}\n    stage: sft\n    model: {{name_or_path: "
                                           f"'${{s{(i + 1) % 1500}.output_dir}}'}}\n    data: {{train: x.jsonl}}\n"
                                           for i in range(1500))}),
    Case("orpo-wrong-data", "data", "prompt-only rows given to a stage that reads pairs", TRAIN,
         "{tmp}/train.jsonl:1: stage orpo reads preference pairs (prompt, chosen, rejected); the row holds "
         "prompt-only rows, which cannot become preference pairs",
         {"r.yaml": GOOD_RECIPE.replace("stage: dpo", "stage: orpo"), "train.jsonl": PROMPT}),
    Case("pairs-wrong-data", "data", "rows without a prompt given to a stage that samples from prompts", TRAIN,
         "{tmp}/train.jsonl:1: field 'prompt': stage pairs reads prompts: a prompt column (text or messages), plus any columns the "
         "reward functions read, such as an answer; *",
         {"r.yaml": PAIRS_RECIPE, "train.jsonl": '{"chosen": "Paris.", "rejected": "No idea."}\n'}),
    Case("data-missing", "data", "a data file that does not exist", TRAIN,
         "{tmp}/train.jsonl: data file not found", {"r.yaml": GOOD_RECIPE}),
    Case("model-unreachable", "model", "a hub model that cannot be fetched (offline)", TRAIN,
         "model 'no-such-org/no-such-model' is not a local directory and could not be fetched from the Hugging "
         "Face Hub (*). On a machine with access run `huggingface-cli download no-such-org/no-such-model "
         "--local-dir DIR`, copy DIR here and set model.name_or_path=DIR",
         recipe_with("builtin:tiny-chat", "no-such-org/no-such-model")),
    Case("model-images-stage", "model", "a vision-language model for a stage that cannot take images", TRAIN,
         "stage orpo cannot take images (model builtin:tiny-vlm is a vision-language model): TRL's ORPOTrainer "
         "(trl.experimental, checked in 1.0 and 1.16) tokenizes text only; the stages that do: sft, dpo*",
         recipe_with("stage: dpo\nmodel:\n  name_or_path: builtin:tiny-chat",
                     "stage: orpo\nmodel:\n  name_or_path: builtin:tiny-vlm")),
    Case("max-length-image-tokens", "recipe", "a max_length shorter than an image row's prompt with its image "
         "tokens, found by --dry-run", [*TRAIN, "--dry-run"],
         "field 'trainer.max_length': 24 is shorter than the prompts of 1 of 1 image row once each image is its 16 "
         "image tokens (the longest: 1 image x 16 + 17 text tokens = 33); TRL would cut image tokens whose image "
         "features remain, and the model's forward fails mid-training. Raise trainer.max_length to at least 33 (more "
         "for the responses), or shorten those prompts",
         {"r.yaml": GOOD_RECIPE.replace("builtin:tiny-chat", "builtin:tiny-vlm").replace("beta: 0.1", "max_length: 24"),
          "train.jsonl": json.dumps({"images": [PNG], "prompt": [{"role": "user", "content": [
              {"type": "image"}, {"type": "text", "text": "What is it?"}]}],
              "chosen": [{"role": "assistant", "content": "Red."}],
              "rejected": [{"role": "assistant", "content": "Blue."}]}) + "\n"}),
    Case("online-dpo-images", "data", "an image prompt with two images for online-dpo (TRL's trainer takes one "
         "image with each prompt)", [*TRAIN, "--dry-run"],
         "{tmp}/train.jsonl:1: field 'images': stage online-dpo reads prompts: a prompt column (text or messages), "
         "plus any columns the reward functions read, such as an answer; the row has 2 images, but TRL's "
         "OnlineDPOTrainer takes exactly one image with each prompt",
         {"r.yaml": ONLINE_RECIPE.replace("builtin:tiny-chat", "builtin:tiny-vlm"),
          "train.jsonl": json.dumps({"images": [PNG, PNG], "prompt": [{"role": "user", "content": [
              {"type": "image"}, {"type": "text", "text": "Which is redder?"}, {"type": "image"}]}]}) + "\n"}),
    Case("builtin-unknown", "model", "a builtin: name that does not exist", TRAIN,
         "no built-in 'tiny-chatt'; built-ins are: tiny-chat, tiny-vlm, demo/train.jsonl, demo/eval.jsonl, "
         "demo/images/train.jsonl, demo/images/eval.jsonl",
         recipe_with("builtin:tiny-chat", "builtin:tiny-chatt")),

    # data rows, through convert-data (training reads data with the same adapters and checks)
    *[Case(f"data-{name}", "data", what, ["convert-data", "{tmp}/in.jsonl", "-o", "{tmp}/out.jsonl"],
           "{tmp}/in.jsonl:2: " + message, {"in.jsonl": GOOD_ROW + row + "\n"})
      for name, what, row, message in [
          ("invalid-json", "a line that is not JSON", '{"prompt": "Q", "chosen": [}',
           "invalid JSON at column 28: Expecting value"),
          ("not-object", "a line that is JSON but not an object", '["prompt", "chosen"]',
           "expected a JSON object, found an array"),
          ("missing-field", "a row without one of the format's fields", '{"prompt": "Q", "chosen": "A"}',
           "field 'rejected': missing (columns found: chosen, prompt)"),
          ("null-field", "a field that is null", '{"prompt": "Q", "chosen": "A", "rejected": null}',
           "field 'rejected': is null"),
          ("empty-response", "a whitespace-only response", '{"prompt": "Q", "chosen": "A", "rejected": "  "}',
           "field 'rejected': response is empty or whitespace only"),
          ("identical", "chosen identical to rejected", '{"prompt": "Q", "chosen": "A", "rejected": "A"}',
           "field 'rejected': chosen and rejected are identical"),
          ("non-string-content", "message content that is not text",
           '{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": 42}], '
           '"rejected": [{"role": "assistant", "content": "B"}]}',
           "field 'chosen[0]': message content must be text, found a number"),
          ("unknown-role", "a message role that is not user/assistant/system/tool",
           '{"prompt": [{"role": "human", "content": "Q"}], "chosen": [{"role": "assistant", "content": "A"}], '
           '"rejected": [{"role": "assistant", "content": "B"}]}',
           "field 'prompt[0]': unknown role 'human' (expected one of assistant, system, tool, user)"),
          ("last-not-assistant", "a conversation whose last turn is not the assistant's",
           '{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, '
           '{"role": "user", "content": "and?"}], "rejected": [{"role": "user", "content": "Q"}, '
           '{"role": "assistant", "content": "B"}]}',
           "field 'chosen': the last turn must be from the assistant, not user"),
          ("prompt-mismatch", "chosen and rejected conversations that differ before the answer",
           '{"chosen": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A"}], '
           '"rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "B"}]}',
           "field 'rejected': chosen and rejected differ at turn 0, before their final assistant turn, so they "
           "share no prompt"),
      ]],
    # rows of the formats read since issue 14, each with the row before it good
    *[Case(f"data-{name}", "data", what, CONVERT, "{tmp}/in.jsonl:2: " + message,
           {"in.jsonl": json.dumps(good) + "\n" + json.dumps(bad) + "\n"})
      for name, what, good, bad, message in [
          ("kto-label", "a KTO label that is not true or false",
           {"messages": [USER, ASSISTANT], "label": True}, {"messages": [USER, ASSISTANT], "label": "maybe"},
           "field 'label': must be true or false, found 'maybe'"),
          ("function-call-json", "a ShareGPT function_call turn whose value is not JSON",
           {"conversations": [HUMAN, GPT]},
           {"conversations": [HUMAN, {"from": "function_call", "value": "get_time()"},
                              {"from": "observation", "value": "12:00"}, GPT]},
           "field 'conversations[1]': not valid JSON (Expecting value)"),
          ("alpaca-sft-output", "an alpaca SFT row with an empty output",
           {"instruction": "Q", "input": "", "output": "A"}, {"instruction": "Q", "input": "", "output": " "},
           "field 'output': response is empty or whitespace only"),
          ("tool-call-arguments", "tool call arguments that are not a JSON object",
           {"messages": [USER, ASSISTANT]},
           {"messages": [USER, {"role": "assistant", "tool_calls": [
               {"type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}]},
           "field 'messages[1].tool_calls': the arguments of tool call 0 (f) must be a JSON object, found a list"),
          ("tools-json", "a tools column that is not valid JSON",
           {"messages": [USER, ASSISTANT], "tools": "[]"}, {"messages": [USER, ASSISTANT], "tools": "[{name: f}]"},
           "field 'tools': not valid JSON (Expecting property name enclosed in double quotes)"),
          ("non-text-part", "a content part that is an image",
           {"messages": [USER, ASSISTANT]},
           {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                      {"type": "image_url", "image_url": {"url": "a.png"}}]},
                         ASSISTANT]},
           "field 'messages[0].content[1]': content part type 'image_url' is not text; dpo-cli reads images as "
           "{\"type\": \"image\"} parts with the images in the row's images column (drop the part, or keep its "
           "text in a text part)"),
          ("image-missing", "an image file that is not there",
           {"images": [PNG], "messages": [IMAGE_USER, ASSISTANT]},
           {"images": ["pics/gone.png"], "messages": [IMAGE_USER, ASSISTANT]},
           "field 'images[0]': image file not found: {tmp}/pics/gone.png"),
          ("image-undecodable", "image bytes no image reader can open",
           {"images": [PNG], "messages": [IMAGE_USER, ASSISTANT]},
           {"images": ["data:image/png;base64,bm90IGFuIGltYWdl"], "messages": [IMAGE_USER, ASSISTANT]},
           "field 'images[0]': not a readable image: no image format (PNG, JPEG, GIF, WebP, ...) recognises its 12 "
           "bytes"),
          ("image-url", "an image given as a URL",
           {"images": [PNG], "messages": [IMAGE_USER, ASSISTANT]},
           {"images": ["https://example.com/cat.png"], "messages": [IMAGE_USER, ASSISTANT]},
           "field 'images[0]': is a URL (https://example.com/cat.png); dpo-cli reads local images only: download it "
           "and give the file's path"),
          ("image-count", "more images than <image> placeholders",
           {"images": [PNG], "messages": [IMAGE_USER, ASSISTANT]},
           {"images": [PNG, PNG], "messages": [IMAGE_USER, ASSISTANT]},
           "field 'images': the row has 2 images but 1 <image> placeholder (image content parts); they must match "
           "one to one"),
          ("v1-prompt-mismatch", "LLaMA-Factory v1 pairs whose conversations differ before the answer",
           {"chosen_messages": [USER, ASSISTANT], "rejected_messages": [USER, {"role": "assistant", "content": "B"}]},
           {"chosen_messages": [USER, ASSISTANT], "rejected_messages": [
               {"role": "user", "content": "Other"}, {"role": "assistant", "content": "B"}]},
           "field 'rejected_messages': chosen and rejected differ at turn 0, before their final assistant turn, so "
           "they share no prompt"),
          ("openai-dpo-outputs", "an OpenAI DPO row with two preferred messages",
           {"input": {"messages": [USER]}, "preferred_output": [ASSISTANT],
            "non_preferred_output": [{"role": "assistant", "content": "B"}]},
           {"input": {"messages": [USER]}, "preferred_output": [ASSISTANT, ASSISTANT],
            "non_preferred_output": [{"role": "assistant", "content": "B"}]},
           "field 'preferred_output': must hold exactly one assistant message (found 2)"),
          ("prompt-messages-order", "prompt-only messages with two user turns in a row",
           {"messages": [USER]}, {"messages": [USER, USER]},
           "field 'messages': two user turns in a row at turn 1"),
      ]],
    Case("convert-nothing-written", "option", "convert-data that would write no row",
         [*CONVERT, "--where", "prompt == 'none'"],
         "no rows to write (1 rows read; 1 filtered out by --where); pass --allow-empty to write an empty file anyway",
         {"in.jsonl": GOOD_ROW}),
    Case("convert-preference-not-pku", "option", "--preference on data that is not PKU-SafeRLHF",
         [*CONVERT, "--preference", "safer"],
         "{tmp}/in.jsonl: --preference safer applies to pku-saferlhf data only, but this file was read as trl; drop "
         "--preference, or convert the pku-saferlhf files on their own", {"in.jsonl": GOOD_ROW}),
    Case("registry-unknown-name", "data", "a registry entry that does not exist",
         ["convert-data", "--registry", "{tmp}/dataset_info.json", "--name", "dpo_en_dem", "-o", "{tmp}/out.jsonl"],
         "{tmp}/dataset_info.json: no dataset named 'dpo_en_dem' in the registry; did you mean 'dpo_en_demo'?",
         {"dataset_info.json": REGISTRY}),
    Case("registry-hub-entry", "data", "a registry entry on the Hugging Face Hub, offline and not in the cache",
         ["convert-data", "--registry", "{tmp}/dataset_info.json", "--name", "dpo_mix_en", "-o", "{tmp}/out.jsonl"],
         "hub:llamafactory/DPO-En-Zh-20k@train: not in the datasets cache and the Hub cannot be reached (offline); "
         "run once where the Hub is reachable, or give a local path", {"dataset_info.json": REGISTRY}),
    Case("registry-modelscope-entry", "data", "a registry entry only on ModelScope",
         ["convert-data", "--registry", "{tmp}/dataset_info.json", "--name", "ms", "-o", "{tmp}/out.jsonl"],
         "{tmp}/dataset_info.json: entry 'ms': is only on ModelScope (ms_hub_url: llamafactory/x); dpo-cli reads the "
         "Hugging Face Hub and local files: download the data and set file_name",
         {"dataset_info.json": json.dumps({"ms": {"ms_hub_url": "llamafactory/x"}})}),
    Case("hub-name-unknown", "data", "a hub: dataset that is neither cached nor reachable",
         ["convert-data", "hub:nobody/nothing@test", "-o", "{tmp}/out.jsonl"],
         "hub:nobody/nothing@test: not in the datasets cache and the Hub cannot be reached (offline); run once where "
         "the Hub is reachable, or give a local path", {}),
    Case("source-rejects-alone", "recipe", "a data source with rejects: but not skip_invalid: true", TRAIN,
         "{tmp}/r.yaml:5: field 'data.train.0': rejects only applies with skip_invalid: true (without it the first "
         "bad row stops)", recipe_with("train: {tmp}/train.jsonl", "train: {path: {tmp}/train.jsonl, rejects: x.jsonl}")),
    Case("dry-run-bad-row", "data", "a bad row, found by --dry-run before anything is loaded", [*TRAIN, "--dry-run"],
         "{tmp}/train.jsonl:2: field 'rejected': stage dpo reads preference pairs (prompt, chosen, rejected); "
         "missing (columns found: chosen, prompt)",
         recipe_with("", "", **{"train.jsonl": PAIR + '{"prompt": "Q", "chosen": "A"}\n'})),
    Case("import-recipe-stage", "recipe", "a LLaMA-Factory YAML whose stage dpo-cli does not run",
         ["import-recipe", "{tmp}/lf.yaml", "-o", "{tmp}/r.yaml"],
         "stage: pt has no dpo-cli stage (dpo-cli runs sft, dpo, kto, rm, ppo)",
         {"lf.yaml": "stage: pt\nmodel_name_or_path: m\ndataset: c4_demo\n"}),
    Case("data-unknown-format", "data", "columns that match no format", CONVERT,
         "{tmp}/in.jsonl:1: cannot tell the data format from the columns (answer, question); name it with --format "
         "(trl, messages, alpaca, sharegpt, hh-rlhf, pku-saferlhf, orca-dpo, ranked, nectar, argilla, shp, helpsteer, "
         "rlaif-v, align-anything, llamafactory-v1, openai-dpo, kto, prompt-only, conversation, prompt-completion) or rename columns with --map prompt=COLUMN", {"in.jsonl": '{"question": "q", "answer": "a"}\n'}),
    Case("data-wrong-values", "data", "TRL's column names (after --map) holding values TRL cannot read",
         [*CONVERT, "--map", "chosen=good", "--map", "rejected=bad"],
         "{tmp}/in.jsonl:1: field 'chosen': the row has format trl's columns, but: expected a list of messages, "
         "found an object",
         {"in.jsonl": '{"prompt": "q", "good": {"text": "a"}, "bad": {"text": "b"}}\n'}),
    Case("train-unknown-format", "data", "training data whose columns match no format (the hint names recipe keys)",
         TRAIN, "{tmp}/train.jsonl:1: stage dpo reads preference pairs (prompt, chosen, rejected); cannot tell the "
         "data format from the columns (answer, question); name it with "
         "the source's format: (*) or rename columns with columns: {prompt: COLUMN}",
         {"r.yaml": GOOD_RECIPE, "train.jsonl": '{"question": "q", "answer": "a"}\n'}),
    Case("data-ambiguous-format", "data", "columns that fit several formats", CONVERT,
         "{tmp}/in.jsonl:1: the columns (chosen, input, instruction, prompt, rejected) fit several formats: trl, "
         "alpaca; choose one with --format",
         {"in.jsonl": '{"prompt": "q", "chosen": "a", "rejected": "b", "instruction": "x", "input": ""}\n'}),
    Case("convert-output-is-input", "option", "convert-data --output naming the input",
         ["convert-data", "{tmp}/in.jsonl", "-o", "{tmp}/in.jsonl"],
         "--output {tmp}/in.jsonl is the input {tmp}/in.jsonl: writing it would destroy what is being read; choose "
         "another path", {"in.jsonl": GOOD_ROW}),
    Case("convert-output-exists", "option", "convert-data onto an existing file without --force", CONVERT,
         "--output {tmp}/out.jsonl exists; pass --force to replace it", {"in.jsonl": GOOD_ROW, "out.jsonl": "x\n"}),
    Case("convert-unknown-format", "option", "a --format name that does not exist", [*CONVERT, "--format", "alpacca"],
         "unknown format 'alpacca'; did you mean 'alpaca'?", {"in.jsonl": GOOD_ROW}),
    Case("convert-where-column", "option", "a --where naming a column the data lacks",
         [*CONVERT, "--where", "lang == 'zh'"],
         "{tmp}/in.jsonl:1: --where names column 'lang', which the first row does not have; expected one of: "
         "chosen, prompt, rejected", {"in.jsonl": GOOD_ROW}),
    Case("convert-eval-split", "option", "an --eval-split that is not a fraction", [*CONVERT, "--eval-split", "2"],
         "--eval-split must be a fraction between 0 and 1, such as 0.05", {"in.jsonl": GOOD_ROW}),
    Case("convert-map-form", "option", "a --map without '='", [*CONVERT, "--map", "prompt"],
         "--map 'prompt' must be CANONICAL=COLUMN, for example --map prompt=question", {"in.jsonl": GOOD_ROW}),
    Case("convert-map-missing", "option", "a --map naming a column the row lacks", [*CONVERT, "--map", "prompt=question"],
         "{tmp}/in.jsonl:1: field 'question': column 'question' (named by --map prompt=question) is missing",
         {"in.jsonl": GOOD_ROW}),
    Case("convert-rejects-is-output", "option", "convert-data --rejects naming the --output file",
         [*CONVERT, "--skip-invalid", "--rejects", "{tmp}/out.jsonl"],
         "{tmp}/out.jsonl is named for two outputs (--output, its .eval split, --rejects); each needs a file of its "
         "own", {"in.jsonl": GOOD_ROW}),
    Case("data-gzip-truncated", "data", "a .jsonl.gz cut short", ["convert-data", "{tmp}/in.jsonl.gz", "-o", "{tmp}/o.jsonl"],
         "{tmp}/in.jsonl.gz:*: the gzip stream is damaged or cut short after line * (Compressed file ended before the "
         "end-of-stream marker was reached)", {"in.jsonl.gz": gzip.compress(GOOD_ROW.encode() * 5000, mtime=0)[:600]}),
    Case("data-gzip-not-gzip", "data", "a .jsonl.gz that is not gzip", ["convert-data", "{tmp}/in.jsonl.gz", "-o",
                                                                        "{tmp}/o.jsonl"],
         "{tmp}/in.jsonl.gz: not a gzip file, though its name ends in .gz", {"in.jsonl.gz": GOOD_ROW}),
    Case("data-json-too-deep", "data", "a .json nested 100,000 levels deep", ["convert-data", "{tmp}/in.json", "-o",
                                                                              "{tmp}/o.jsonl"],
         "{tmp}/in.json: JSON nested too deeply to read", {"in.json": "[" * 100_000 + "]" * 100_000}),
    Case("data-arrow-missing", "data", "a save_to_disk folder without its arrow file",
         ["convert-data", "{tmp}/ds", "-o", "{tmp}/o.jsonl"],
         "{tmp}/ds: its state.json lists data-00000-of-00001.arrow, which is not in the directory (a copy that left "
         "the data behind?)", {"ds/dataset_info.json": "{}",
                               "ds/state.json": '{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}'}),
    *[Case(f"where-too-deep-{name}", "option", f"a --where nested {what} 5000 levels deep", [*CONVERT, "--where", where],
           "--where: the expression nests parentheses, lists or 'not' more than 100 levels deep",
           {"in.jsonl": GOOD_ROW})
      for name, what, where in [("parentheses", "in parentheses", "(" * 5000 + "prompt == 'Q'" + ")" * 5000),
                                ("not", "in 'not'", "not " * 5000 + "prompt == 'Q'")]],
    Case("inspect-empty", "data", "inspect-data on a file with no rows", ["inspect-data", "{tmp}/in.jsonl"],
         "{tmp}/in.jsonl: no rows: the files hold nothing to inspect or train on", {"in.jsonl": ""}),

    # the second hostile round (issue 22): every file a command writes goes through one output check
    *[Case(f"rejects-{name}", "recipe", what, [*TRAIN, "--dry-run"], "{tmp}/r.yaml:5: field 'data.train.0.rejects': "
           "rejects file " + message, recipe_with("train: {tmp}/train.jsonl", "train: {path: {tmp}/train.jsonl, "
                                                  "skip_invalid: true, rejects: " + rejects + "}", **files))
      for name, what, rejects, message, files in [
          ("is-the-source", "a data source whose rejects: is the source itself", "{tmp}/train.jsonl",
           "{tmp}/train.jsonl is the input {tmp}/train.jsonl: writing it would destroy what is being read; choose "
           "another path", {}),
          ("is-the-recipe", "a data source whose rejects: is the recipe", "{tmp}/r.yaml",
           "{tmp}/r.yaml is the input {tmp}/r.yaml: writing it would destroy what is being read; choose another "
           "path", {}),
          ("in-a-model", "a data source whose rejects: is a file of a saved model", "{tmp}/model/tokenizer.json",
           "{tmp}/model/tokenizer.json lies inside the saved model {tmp}/model; writing there would corrupt it: "
           "write it elsewhere", {"model/config.json": TINY_LLAMA, "model/tokenizer.json": "{}"}),
      ]],
    Case("rejects-exists", "option", "a data source's rejects: file that exists, without --overwrite", TRAIN,
         "rejects file {tmp}/rejects.jsonl exists; pass --overwrite to replace it",
         recipe_with("train: {tmp}/train.jsonl", "train: {path: {tmp}/train.jsonl, skip_invalid: true, rejects: "
                     "{tmp}/rejects.jsonl}", **{"rejects.jsonl": "mine\n"})),
    Case("import-recipe-over-itself", "option", "import-recipe -o naming its own input, even with --force",
         ["import-recipe", "{tmp}/lf.yaml", "-o", "{tmp}/lf.yaml", "--force"],
         "--output {tmp}/lf.yaml is the input {tmp}/lf.yaml: writing it would destroy what is being read; choose "
         "another path", {"lf.yaml": "stage: dpo\nmodel_name_or_path: m\ndataset: dpo_en_demo\n"}),
    Case("convert-output-in-a-model", "option", "convert-data -o into a saved model's directory, even with --force",
         [*CONVERT[:-1], "{tmp}/model/tokenizer.json", "--force"],
         "--output {tmp}/model/tokenizer.json lies inside the saved model {tmp}/model; writing there would corrupt "
         "it: write it elsewhere", {"in.jsonl": GOOD_ROW, "model/config.json": TINY_LLAMA,
                                    "model/model.safetensors": "weights", "model/tokenizer.json": "{}"}),
    Case("report-output-exists", "option", "dpo-cli report -o onto an existing file without --force",
         ["report", "{tmp}/run", "-o", "{tmp}/notes.html"], "--output {tmp}/notes.html exists; pass --force to "
         "replace it", {"run/run.json": '{"status": "completed"}', "run/recipe.resolved.yaml": GOOD_RECIPE,
                        "notes.html": "mine"}),
    Case("score-output-exists", "option", "dpo-cli score -o onto an existing file without --force",
         ["score", "builtin:tiny-chat", "--data", "{tmp}/train.jsonl", "-o", "{tmp}/scores.jsonl"],
         "--output {tmp}/scores.jsonl exists; pass --force to replace it",
         {"train.jsonl": PAIR, "scores.jsonl": "mine"}),
    # secrets: never echoed, whatever their type or name
    Case("secret-number-echoed", "recipe", "a number under a secret key where text is due", TRAIN,
         "{tmp}/r.yaml:9: field 'env.DB_PASSWORD': Input should be a valid string (got <redacted>)",
         recipe_with("output_dir: {tmp}/run\n", "output_dir: {tmp}/run\nenv: {DB_PASSWORD: 98765.4321}\n")),
    Case("secret-list-echoed", "recipe", "a list under a secret key", TRAIN,
         "{tmp}/r.yaml:9: field 'env.PGPASSWORD': Input should be a valid string (got <redacted>)",
         recipe_with("output_dir: {tmp}/run\n", "output_dir: {tmp}/run\nenv: {PGPASSWORD: [hunter22, s3cr3t99]}\n")),
    Case("secret-in-a-url", "model", "a password in the URL given as the model", TRAIN,
         "model 'https://<redacted>@example.invalid/org/model' is not a local directory and could not be fetched "
         "from the Hugging Face Hub (*). On a machine with access run `huggingface-cli download "
         "https://<redacted>@example.invalid/org/model --local-dir DIR`, copy DIR here and set "
         "model.name_or_path=DIR",
         recipe_with("builtin:tiny-chat", "'https://user:hunter2pass@example.invalid/org/model'")),
    # hangs: each runs in its own process, stopped after a minute should it hang again
    Case("yaml-billion-laughs", "recipe", "YAML aliases of aliases that expand to a billion values", TRAIN,
         "{tmp}/r.yaml:13: YAML aliases expand this value to more than 200,000 values (aliases of aliases, a "
         "'billion laughs'); write the values out, or alias fewer times",
         recipe_with("trainer:\n  beta: 0.1\n", "trainer:\n  beta: 0.1\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
                     + "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))),
         timeout=60),
    Case("import-recipe-billion-laughs", "recipe", "a LLaMA-Factory YAML whose aliases expand to a billion values",
         ["import-recipe", "{tmp}/lf.yaml", "-o", "{tmp}/r.yaml"],
         "{tmp}/lf.yaml:8: YAML aliases expand this value to more than 200,000 values (aliases of aliases, a "
         "'billion laughs'); write the values out, or alias fewer times",
         {"lf.yaml": "stage: dpo\nmodel_name_or_path: m\na0: &a0 [x, x, x, x, x, x, x, x, x]\n"
                     + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))},
         timeout=60),
    Case("yaml-recursive", "recipe", "a YAML alias inside the value it names", TRAIN,
         "{tmp}/r.yaml:2: a YAML alias refers to the value that holds it (recursive YAML), which has no end; a "
         "recipe must be a tree", {"r.yaml": "stage: dpo\nmodel: &m\n  name_or_path: builtin:tiny-chat\n"
                                            "  again: *m\n"}, timeout=60),
    Case("override-recursive", "option", "an override value that is recursive YAML", [*TRAIN, "trainer.beta=&a [*a]"],
         "override value '&a [*a]': a YAML alias refers to the value that holds it (recursive YAML), which has no "
         "end; a recipe must be a tree", recipe_with("", ""), timeout=60),
    Case("override-too-deep", "option", "an override value nested 5000 levels deep",
         [*TRAIN, "trainer.beta=" + "[" * 5000 + "]" * 5000],
         "override value '" + "[" * 60 + "...': the YAML nests values more than 100 levels deep", recipe_with("", "")),
    Case("recipe-too-deep", "recipe", "a recipe nested 5000 levels deep", TRAIN,
         "{tmp}/r.yaml: the YAML nests values more than 100 levels deep",
         {"r.yaml": "stage: dpo\nmodel: " + "[" * 5000 + "]" * 5000 + "\n"}),
    Case("recipe-is-a-directory", "recipe", "a recipe path that is a directory", ["train", "{tmp}/recipes"],
         "{tmp}/recipes is a directory; give the recipe's YAML file", {"recipes/": ""}),
    Case("recipe-is-a-pipe", "recipe", "a recipe path that is a named pipe", TRAIN,
         "{tmp}/r.yaml is not a regular file (a pipe, device or socket); give the recipe's YAML file",
         {"r.yaml": FIFO}, timeout=60),
    Case("data-is-a-pipe", "data", "a data file that is a named pipe (reading it would block for ever)", CONVERT,
         "{tmp}/in.jsonl: not a regular file (a pipe, device or socket); give a data file or directory",
         {"in.jsonl": FIFO}, timeout=60),
    Case("data-is-a-device", "data", "a data file that is a link to /dev/zero (reading it never ends)",
         [*TRAIN, "--dry-run"], "{tmp}/train.jsonl: not a regular file (a pipe, device or socket); give a data file "
         "or directory", {"r.yaml": GOOD_RECIPE, "train.jsonl": Special("link", "/dev/zero")}, timeout=60),
]

# The second hostile round (issue 22, items 16 to 18): wrong successes, tracebacks and misleading messages.
NAN_RECIPE = GOOD_RECIPE.replace("beta: 0.1", "learning_rate: .nan")
CASES += [
    Case("negative-beta", "recipe", "a DPO beta below zero (it would train toward the rejected answers)",
         [*TRAIN, "trainer.beta=-1", "--dry-run"],
         "command-line override 'trainer.beta=-1': field 'trainer.beta': must be positive (got -1): beta scales the "
         "preference in the loss, so below zero training moves toward the rejected answers and at zero it learns "
         "nothing; the usual range is 0.01 to 0.5", recipe_with("", "")),
    Case("kto-zero-beta", "recipe", "a KTO beta of zero", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.beta': must be positive (got 0): beta scales the preference in the loss, so "
         "below zero training moves toward the rejected answers and at zero it learns nothing; the usual range is "
         "0.01 to 0.5", {"r.yaml": GOOD_RECIPE.replace("stage: dpo", "stage: kto").replace("beta: 0.1", "beta: 0"),
                         "train.jsonl": PAIR}),
    Case("grpo-negative-beta", "recipe", "a GRPO KL weight below zero", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.beta': must not be negative (got -0.5): a negative beta turns its term around "
         "and trains away from what it should; 0 turns the KL penalty to the reference off (TRL's default)",
         {"r.yaml": GOOD_RECIPE.replace("stage: dpo", "stage: grpo").replace("beta: 0.1", "beta: -0.5")
          + "reward:\n  functions: [length]\n", "train.jsonl": PROMPT}),
    Case("nan-in-recipe", "recipe", "a learning rate of .nan in the recipe", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.learning_rate': must be a finite number (got nan)",
         {"r.yaml": NAN_RECIPE, "train.jsonl": PAIR}),
    Case("nan-beta-in-recipe", "recipe", "a beta of .nan (TRL would train on NaN losses)", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.beta': must be a finite number (got nan)", recipe_with("0.1", ".nan")),
    Case("nan-override", "option", "logging_steps=.nan (a run with no metrics)",
         [*TRAIN, "trainer.logging_steps=.nan", "--dry-run"],
         "command-line override 'trainer.logging_steps=.nan': field 'trainer.logging_steps': must be a finite "
         "number (got nan)", recipe_with("", "")),
    Case("inf-in-own-section", "recipe", "an infinite LoRA alpha", TRAIN,
         "{tmp}/r.yaml:5: field 'lora.alpha': must be a finite number (got inf)",
         recipe_with("data:\n", "lora:\n  alpha: .inf\ndata:\n")),
    Case("nan-as-text", "recipe", "a learning rate given as the text 'nan'", TRAIN,
         "{tmp}/r.yaml:7: field 'trainer.learning_rate': Input should be a finite number (got 'nan')",
         recipe_with("beta: 0.1", "learning_rate: 'nan'")),
    Case("override-key-too-deep", "option", "an override whose key is 5,000 levels deep",
         [*TRAIN, ".".join(["a"] * 5000) + "=1"],
         "override 'a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a....' names a key 5000 levels deep; "
         "recipe keys are at most a few levels deep (section.key, or NAME.section.key in a pipeline)",
         recipe_with("", "")),
    Case("homoglyph-key", "recipe", "a key with a look-alike letter (a Cyrillic а in stаge)", TRAIN,
         "{tmp}/r.yaml:1: field 'st\u0430ge': unknown key 'st\u0430ge'; did you mean 'stage'? ('st\u0430ge' holds "
         "'\u0430', U+0430 CYRILLIC SMALL LETTER A, which is not ASCII however alike it looks: retype the name)",
         recipe_with("stage: dpo", "st\u0430ge: dpo")),
    Case("homoglyph-value", "recipe", "a stage name with a look-alike letter", TRAIN,
         "{tmp}/r.yaml:1: field 'stage': unknown stage 'dp\u043e'; did you mean 'dpo'? ('dp\u043e' holds '\u043e', "
         "U+043E CYRILLIC SMALL LETTER O, which is not ASCII however alike it looks: retype the name)",
         recipe_with("stage: dpo", "stage: dp\u043e")),
    Case("inspect-negative-max-length", "option", "inspect-data --max-length below one",
         ["inspect-data", "{tmp}/in.jsonl", "--tokenizer", "builtin:tiny-chat", "--max-length", "-5"],
         "--max-length must be a positive number of tokens (got -5)", {"in.jsonl": GOOD_ROW}),
    Case("pair-differs-in-whitespace", "data", "chosen and rejected that differ only in trailing whitespace",
         CONVERT, "{tmp}/in.jsonl:1: field 'rejected': chosen and rejected differ only in whitespace (spaces, tabs "
         "or newlines); a pair must differ in what it says",
         {"in.jsonl": '{"prompt": "Q", "chosen": "Paris.", "rejected": "Paris.\\n"}\n'}),
    Case("conversation-whitespace-pair", "data", "conversations whose answers differ only in spaces", CONVERT,
         "{tmp}/in.jsonl:1: field 'rejected': chosen and rejected differ only in whitespace (spaces, tabs or "
         "newlines); a pair must differ in what it says",
         {"in.jsonl": json.dumps({"chosen": [USER, {"role": "assistant", "content": "A  b"}],
                                  "rejected": [USER, {"role": "assistant", "content": "A b "}]}) + "\n"}),
    Case("system-turn-inside-chosen", "data", "a system turn in the middle of chosen (not rejected's fault)", CONVERT,
         "{tmp}/in.jsonl:1: field 'chosen': a system message may only come first (found at turn 1)",
         {"in.jsonl": json.dumps({"chosen": [USER, {"role": "system", "content": "S"}, ASSISTANT],
                                  "rejected": [USER, {"role": "assistant", "content": "B"}]}) + "\n"}),
    *[Case(f"lone-surrogate-{command}", "data", f"a lone surrogate escape in a JSON string ({command})",
           argv, "{tmp}/in.jsonl:1: field 'chosen': " + ("stage dpo reads preference pairs (prompt, chosen, rejected); "
                                                         if command == "train" else "")
           + "invalid UTF-8 text: a \\uD800-\\uDFFF escape without its other half (a lone UTF-16 surrogate, often a "
           "string cut in the middle of an emoji); no UTF-8 text can hold it: fix or drop the row",
           {"in.jsonl": '{"prompt": "Q", "chosen": "A \\ud800", "rejected": "B"}\n', "r.yaml":
            GOOD_RECIPE.replace("train.jsonl", "in.jsonl")})
      for command, argv in [("convert-data", CONVERT), ("train", [*TRAIN, "--dry-run"])]],
    Case("lone-surrogate-json-array", "data", "a lone surrogate inside a message of a .json file",
         ["convert-data", "{tmp}/in.json", "-o", "{tmp}/o.jsonl"],
         "{tmp}/in.json:1: field 'chosen[1].content': invalid UTF-8 text: a \\uD800-\\uDFFF escape without its other "
         "half (a lone UTF-16 surrogate, often a string cut in the middle of an emoji); no UTF-8 text can hold it: "
         "fix or drop the row",
         {"in.json": '[{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\\udc00"}], '
                     '"rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]}]'}),
    Case("chat-template-raises", "model", "a chat template that raises on the data, found by --dry-run",
         [*TRAIN, "--dry-run"],
         "model.chat_template fails on the first training row ({tmp}/chat.jsonl:1): TemplateError: no system turns "
         "here; fix the template or the row",
         {"r.yaml": GOOD_RECIPE.replace("builtin:tiny-chat\n", "builtin:tiny-chat\n  chat_template: \"{{ "
                                        "raise_exception('no system turns here') }}\"\n")
          .replace("train.jsonl", "chat.jsonl"),
          "chat.jsonl": json.dumps({"prompt": [USER], "chosen": [ASSISTANT],
                                    "rejected": [{"role": "assistant", "content": "B"}]}) + "\n"}),
    Case("model-is-a-text-file", "model", "a text file given as the model", [*TRAIN, "--dry-run"],
         "model {tmp}/model.txt is a file, not a model directory; give the directory that holds its config.json and "
         "weights (a saved run or a downloaded model), or a hub name",
         recipe_with("builtin:tiny-chat", "{tmp}/model.txt", **{"model.txt": "hello"})),
    Case("model-path-missing", "model", "a model path that does not exist (not a hub name)", TRAIN,
         "model directory ./no-such-model does not exist (a path, so not a hub name); check the path",
         recipe_with("builtin:tiny-chat", "./no-such-model")),
    Case("convert-disk-full", "run", "convert-data onto a full disk", CONVERT,
         "cannot write {tmp}/out.jsonl: No space left on device; no output was written", {"in.jsonl": GOOD_ROW},
         exit_code=1, fault=lambda monkeypatch, tmp: _full_disk_for_rows(monkeypatch)),
    Case("convert-read-only", "option", "convert-data into a read-only directory", CONVERT,
         "cannot write {tmp}/out.jsonl: Read-only file system; no output was written", {"in.jsonl": GOOD_ROW},
         fault=lambda monkeypatch, tmp: _read_only_directories(monkeypatch)),
    Case("final-save-disk-full", "run", "a full disk while the final model is saved (safetensors' own error)",
         [*TRAIN, "trainer.max_steps=1", "trainer.save_strategy=no"],
         "saving the final model to {tmp}/run failed (Error while serializing: I/O error: No space left on device (os "
         "error 28)); the files it had written are removed; no checkpoint was saved before it", recipe_with("", ""),
         exit_code=1, fault=lambda monkeypatch, tmp: _full_disk_for_weights(monkeypatch)),
]


def _full_disk_for_rows(monkeypatch) -> None:
    from dpo_cli.data import writers

    def full(self, line, row=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers.JsonlWriter, "write", full)


def _read_only_directories(monkeypatch) -> None:
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)


def _full_disk_for_weights(monkeypatch) -> None:
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)
