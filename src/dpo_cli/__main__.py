"""``python -m dpo_cli`` (also under ``accelerate launch -m dpo_cli`` and ``torchrun -m dpo_cli``)."""

from dpo_cli.cli import main

main()
