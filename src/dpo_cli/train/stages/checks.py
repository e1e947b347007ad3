"""Recipe checks more than one stage shares: loss types the installed TRL knows, reward functions that load."""

from __future__ import annotations

import difflib

from dpo_cli.recipe.schema import Recipe
from dpo_cli.recipe.yamlfile import ErrorAt
from dpo_cli.train.rewards import RewardSpec, SpecError, load_user_function, parse_spec
from dpo_cli.train.trl_compat import field_choices


def check_loss_types(recipe: Recipe, error: ErrorAt, config_class: type) -> list[str]:
    """Each trainer.loss_type must be one the installed TRL lists for this config; returns the names given.

    Fails closed: when the config's loss types cannot be read, a recipe that sets one is refused rather than passed on
    to fail mid-run.
    """
    given = recipe.trainer.get("loss_type")
    if given is None:
        return []
    given = [given] if isinstance(given, str) else list(given)
    import trl

    known = field_choices(config_class, "loss_type")
    if not known:
        raise error(("trainer", "loss_type"), f"cannot read which loss types {config_class.__name__} of TRL "
                    f"{trl.__version__} accepts, so trainer.loss_type cannot be checked; remove it to use the default, "
                    f"or install a TRL version dpo-cli supports")
    for i, name in enumerate(given):
        if name not in known:
            entry = "" if len(given) == 1 else f" (entry {i + 1} of the list)"
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise error(("trainer", "loss_type"), f"loss type '{name}'{entry} is not one TRL {trl.__version__} "
                        f"knows{hint}; it knows: {', '.join(known)}")
    return given


def reward_specs(recipe: Recipe, error: ErrorAt) -> list[RewardSpec]:
    """The reward: section's functions, parsed; a user function's file, module or name fails now, not mid-run."""
    if recipe.reward is None or not recipe.reward.functions:
        raise error(("reward",), f"stage {recipe.stage} needs reward functions: reward: {{functions: [...]}} with "
                    "built-ins (length, regex, contains_answer, reward_model) or module:function entries")
    if recipe.reward.weights is not None and "reward_weights" in recipe.trainer:
        raise error(("trainer", "reward_weights"), "set the weights once: reward.weights or trainer.reward_weights")
    specs = []
    for i, entry in enumerate(recipe.reward.functions):
        try:
            spec = parse_spec(entry)
            if not spec.builtin:
                load_user_function(spec.name)
        except SpecError as exc:
            raise error(("reward", "functions", i), str(exc)) from None
        specs.append(spec)
    return specs
