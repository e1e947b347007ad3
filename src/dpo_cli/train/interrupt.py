"""SIGTERM and SIGINT during training: finish the step, save a complete checkpoint, exit 143 or 130."""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback

from dpo_cli.core.errors import DpoCliError


class Interrupted(DpoCliError):
    """Training stopped on a signal; the exit code is 128 + the signal number, as shells report it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class GracefulStop(TrainerCallback):
    """The first signal asks for a checkpoint and a stop at the end of the current step; a second exits at once.

    ``step_loop``: the trainer honours should_training_stop (transformers' loop). Otherwise (TRL's PPO loop) the
    signal ends the run at the step's end with Interrupted, since that loop neither stops nor resumes.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stage: str, step_loop: bool = True):
        self.stage, self.step_loop = stage, step_loop
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.signum is not None
        if args.world_size > 1:  # every rank must stop at the same step, or the others hang in a collective
            import torch
            import torch.distributed as dist

            flag = torch.tensor([self.signum or 0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = int(flag.item()) or None
            stop = self.signum is not None
        if stop and not self.step_loop:
            raise Interrupted(f"stopped by {signal.Signals(self.signum).name} after step {state.global_step}; stage "
                              f"{self.stage} cannot resume from a checkpoint (TRL's trainer for it has no resume): "
                              f"run the stage again from the start", self.signum)
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control
