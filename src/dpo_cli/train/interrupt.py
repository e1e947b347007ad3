"""SIGTERM and SIGINT over a whole train command: what a signal does depends on what the run is doing."""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback

from dpo_cli.core.errors import Interrupted


class GracefulStop(TrainerCallback):
    """Installed for the whole command; a second signal exits at once. By phase, the first one:

    - ``prepare`` (data, models, trainer) and ``evaluate`` (held-out scoring): stops at once; nothing is lost that
      a save could keep (after evaluate, the run still saves its final model);
    - ``train``: asks for a checkpoint and a stop at the end of the current step. A trainer with its own loop
      (``step_loop`` false: TRL's PPO), which neither stops on request nor resumes, ends the run at the step's end;
    - ``save``: lets the save finish.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stage: str, step_loop: bool = True):
        self.stage, self.step_loop = stage, step_loop
        self.phase = "prepare"
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def name(self) -> str:
        return signal.Signals(self.signum).name

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        if self.phase in ("prepare", "evaluate"):
            raise Interrupted(f"stopped by {self.name()} while {self.phase.replace('prepare', 'preparing')}", signum)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.signum is not None
        if args.world_size > 1:  # every rank must stop at the same step, or the others hang in a collective
            import torch
            import torch.distributed as dist

            flag = torch.tensor([self.signum or 0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            # A signal that lands while this rank waits in the collective is handled as it returns, after its flag
            # was sent: it stays pending for the next step's reduction (overwriting it with the reduced value lost
            # it, and every rank trained on to the end), so all ranks still stop at one step.
            reduced = int(flag.item())
            stop = reduced != 0
            if stop:
                self.signum = reduced
        if stop and not self.step_loop:
            raise Interrupted(f"stopped by {self.name()} after step {state.global_step}; stage {self.stage} cannot "
                              f"resume from a checkpoint (TRL's trainer for it has no resume): run the stage again "
                              f"from the start", self.signum)
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control
