"""The bad-input catalogue: every input dpo-cli refuses, the command, and the exact message it prints.

tests/test_catalogue.py runs each case; scripts/make_error_catalogue.py writes docs/errors.md from the same list, so
the page can never drift from what the program says. In files, argv and messages ``{tmp}`` is the case's directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Case:
    name: str
    area: str  # recipe, option, data, model, run
    what: str
    argv: list[str]
    message: str
    files: dict[str, str] = field(default_factory=dict)
    exit_code: int = 2


def recipe_with(old: str, new: str, **files: str) -> dict[str, str]:
    return {"r.yaml": GOOD_RECIPE.replace(old, new), "train.jsonl": PAIR, **files}


TRAIN = ["train", "{tmp}/r.yaml"]
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
    Case("resume-nothing", "option", "--resume auto with no complete checkpoint", [*TRAIN, "--resume", "auto"],
         "--resume auto: no complete checkpoint in {tmp}/run", recipe_with("", "", **{"run/checkpoint-2/x": ""})),
    Case("resume-missing", "option", "--resume PATH that does not exist",
         [*TRAIN, "--resume", "{tmp}/run/checkpoint-9"],
         "--resume {tmp}/run/checkpoint-9: no such checkpoint directory", recipe_with("", "")),
    Case("resume-incomplete", "option", "--resume PATH of an incomplete checkpoint",
         [*TRAIN, "--resume", "{tmp}/run/checkpoint-2"],
         "--resume {tmp}/run/checkpoint-2: cannot resume from it: no completion marker (the save was interrupted)",
         recipe_with("", "", **{"run/checkpoint-2/trainer_state.json": "{}"})),
    Case("orpo-wrong-data", "data", "prompt-only rows given to a stage that reads pairs", TRAIN,
         "{tmp}/train.jsonl:1: stage orpo reads preference pairs (prompt, chosen, rejected); the row holds "
         "prompt-only rows, which cannot become preference pairs",
         {"r.yaml": GOOD_RECIPE.replace("stage: dpo", "stage: orpo"), "train.jsonl": PROMPT}),
    Case("pairs-wrong-data", "data", "rows without a prompt given to a stage that samples from prompts", TRAIN,
         "{tmp}/train.jsonl:1: stage pairs reads prompts: a prompt column (text or messages), plus any columns the "
         "reward functions read, such as an answer; *",
         {"r.yaml": PAIRS_RECIPE, "train.jsonl": '{"chosen": "Paris.", "rejected": "No idea."}\n'}),
    Case("data-missing", "data", "a data file that does not exist", TRAIN,
         "{tmp}/train.jsonl: data file not found", {"r.yaml": GOOD_RECIPE}),
    Case("model-unreachable", "model", "a hub model that cannot be fetched (offline)", TRAIN,
         "model 'no-such-org/no-such-model' is not a local directory and could not be fetched from the Hugging "
         "Face Hub (*). On a machine with access run `huggingface-cli download no-such-org/no-such-model "
         "--local-dir DIR`, copy DIR here and set model.name_or_path=DIR",
         recipe_with("builtin:tiny-chat", "no-such-org/no-such-model")),
    Case("builtin-unknown", "model", "a builtin: name that does not exist", TRAIN,
         "no built-in 'tiny-chatt'; built-ins are: tiny-chat, demo/train.jsonl, demo/eval.jsonl",
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
    Case("data-unknown-format", "data", "columns that match no format", CONVERT,
         "{tmp}/in.jsonl:1: cannot tell the data format from the columns (answer, question); name it with --format "
         "(trl, messages, alpaca, sharegpt, hh-rlhf, pku-saferlhf, orca-dpo, ranked, kto, prompt-only, conversation, "
         "prompt-completion) or rename columns with --map prompt=COLUMN", {"in.jsonl": '{"question": "q", "answer": "a"}\n'}),
    Case("data-ambiguous-format", "data", "columns that fit several formats", CONVERT,
         "{tmp}/in.jsonl:1: the columns (chosen, input, instruction, prompt, rejected) fit several formats: trl, "
         "alpaca; choose one with --format",
         {"in.jsonl": '{"prompt": "q", "chosen": "a", "rejected": "b", "instruction": "x", "input": ""}\n'}),
    Case("convert-output-is-input", "option", "convert-data --output naming the input",
         ["convert-data", "{tmp}/in.jsonl", "-o", "{tmp}/in.jsonl"],
         "the output {tmp}/in.jsonl is the input {tmp}/in.jsonl (or a link to it); inputs are never written to, "
         "choose another --output", {"in.jsonl": GOOD_ROW}),
    Case("convert-output-exists", "option", "convert-data onto an existing file without --force", CONVERT,
         "{tmp}/out.jsonl exists; pass --force to replace it", {"in.jsonl": GOOD_ROW, "out.jsonl": "x\n"}),
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
]
