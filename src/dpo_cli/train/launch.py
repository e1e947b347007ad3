"""Several processes: relaunch a train command through torchrun (CPU) or accelerate launch (GPU), check configs."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from dpo_cli.core import console
from dpo_cli.core.builtins import asset_path
from dpo_cli.core.errors import InputError
from dpo_cli.recipe.yamlfile import NodeProblem, construct
from dpo_cli.train.device import launcher

SHIPPED_CONFIGS = ("ddp", "fsdp2", "zero2", "zero3", "zero3-offload")
JOIN_TIMEOUT = 600  # seconds a node waits for the others at the rendezvous (torch's own default)
STOP_TIMEOUT = 600  # seconds the launcher gives the workers to stop with a checkpoint before it kills them


def inside_launcher() -> bool:
    """True in a process started by torchrun or accelerate launch (they set LOCAL_RANK for every worker)."""
    return "LOCAL_RANK" in os.environ


def leave_process_group() -> None:
    """Close this worker's process group once its run is done: a worker exiting with it open can abort while the
    interpreter tears it down (seen as 'terminate called without an active exception' on gloo, a warning on NCCL)."""
    if "torch.distributed" not in sys.modules:  # never imports torch for a command that did not
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def accelerate_config_path(name_or_path: str) -> Path:
    """A shipped config by name (ddp, fsdp2, zero2, zero3, zero3-offload) or a path to one's own."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if name_or_path in SHIPPED_CONFIGS:
        return asset_path(f"accelerate/{name_or_path}.yaml")
    raise InputError(f"accelerate config '{name_or_path}' is neither a file nor a shipped config "
                     f"({', '.join(SHIPPED_CONFIGS)})")


def load_accelerate_config(path: Path) -> dict:
    try:
        config, _ = construct(path.read_text(encoding="utf-8"))  # with the recipe's bounds on aliases and depth
    except NodeProblem as exc:
        raise InputError(f"{path}{f':{exc.line}' if exc.line else ''}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{line}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise InputError(f"{path}: not an Accelerate config (no distributed_type); make one with `accelerate config`")
    return config


def config_warnings(config: dict, recipe, device: str) -> list[str]:
    """Known bad mixes of an Accelerate config with a recipe and the hardware."""
    found = []
    kind = config.get("distributed_type")
    zero_stage = (config.get("deepspeed_config") or {}).get("zero_stage")
    if device == "cpu" and kind in {"DEEPSPEED", "FSDP", "MULTI_GPU"}:
        found.append(f"{kind} needs GPUs; on this CPU-only machine --nproc runs torchrun with gloo instead")
    # only where the reference plan is a frozen copy of the policy: not precomputed, not LoRA's shared weights
    if kind == "DEEPSPEED" and zero_stage == 3 and _reference_kind(recipe) == "copy":
        found.append("ZeRO-3 with full fine-tuning keeps a frozen copy of the policy as the reference, which DeepSpeed "
                     "must shard too (slow, and an unsharded reference is a full copy per GPU); prefer LoRA, which "
                     "shares the policy's weights as the reference, or ref_model.precompute: true")
    precision = config.get("mixed_precision")
    wanted = "bf16" if recipe.trainer.get("bf16") else "fp16" if recipe.trainer.get("fp16") else None
    if precision in {"bf16", "fp16"} and wanted and precision != wanted:
        found.append(f"the config asks for {precision} mixed precision but the recipe sets trainer.{wanted}")
    return found


def _reference_kind(recipe) -> str:
    from dpo_cli.train.stages import get_stage

    return get_stage(recipe.stage).reference(recipe).kind


def check_processes(nproc: int, plan, share_gpus: bool) -> None:
    """Refuse more processes than GPUs: processes sharing one GPU split its memory and, in bf16, drift from one
    process (measured on one H100: --nproc 2 losses 4 % off a single process by step 2)."""
    if plan.device != "cuda" or plan.assumed or nproc <= plan.gpus or share_gpus:
        return
    raise InputError(f"--nproc {nproc} starts {nproc} processes but this machine shows {plan.gpus} GPU(s) "
                     f"({plan.reason}); processes on one GPU share its memory and do not match a single process. Use "
                     f"--nproc {plan.gpus}, make more GPUs visible (CUDA_VISIBLE_DEVICES), or pass --share-gpus to "
                     f"start them anyway")


def global_batch(args, processes: int) -> dict[str, int]:
    """Rows per optimizer step: per device x accumulation x processes (per_device_train_batch_size is per process)."""
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    return {"per_device": per_device, "accumulation": accumulation, "processes": processes,
            "rows": per_device * accumulation * processes}


def launched_by_accelerate() -> bool:
    return launcher().precision is not None


def distributed_record(trainer, args) -> dict:
    """What runs, as accelerate set it up in this process: distributed type, processes and nodes, mixed precision
    and the global batch; ``asked`` is the type an Accelerate config asked for when that is not what runs."""
    state = trainer.accelerator.state
    processes = state.num_processes
    record = {"type": state.distributed_type.value, "processes": processes,
              "nodes": max(1, processes // int(os.environ.get("LOCAL_WORLD_SIZE", processes))),
              "mixed_precision": str(trainer.accelerator.mixed_precision),
              "global_batch": global_batch(args, processes)}
    if record["type"] == "DEEPSPEED":
        record["zero_stage"] = state.deepspeed_plugin.zero_stage
    asked = launcher().kind
    if asked and asked != record["type"]:
        record["asked"] = asked
    return record


@dataclass(frozen=True)
class Nodes:
    """The machines of a job as --nnodes, --node-rank, --master and --join-timeout give them."""

    count: int = 1
    rank: int = 0
    host: str = "127.0.0.1"
    port: int = 29500
    join_timeout: int = JOIN_TIMEOUT

    @classmethod
    def parse(cls, count: int, rank: int | None, master: str | None, join_timeout: int) -> Nodes:
        if count == 1:
            if rank or master:
                raise InputError("--node-rank and --master describe a job of several machines: give --nnodes too")
            return cls(join_timeout=join_timeout)
        if rank is None or master is None:
            raise InputError(f"--nnodes {count} needs this machine's --node-rank (0 to {count - 1}) and --master "
                             "HOST:PORT, the address of node 0 that every node can reach")
        if not 0 <= rank < count:
            raise InputError(f"--node-rank {rank} is outside 0 to {count - 1} (--nnodes {count})")
        host, _, port = master.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"--master '{master}' is not HOST:PORT (for example 10.0.0.1:29500)")
        return cls(count, rank, host, int(port), join_timeout)

    def waiting(self) -> str | None:
        """What the launcher waits for before any worker starts; it says nothing itself for up to the timeout."""
        if self.count == 1:
            return None
        return (f"node {self.rank} of {self.count}: waiting up to {self.join_timeout} s (--join-timeout) for all "
                f"{self.count} nodes to join at {self.host}:{self.port}; start the same command on every node with "
                f"its --node-rank")


def _script(name: str) -> str | None:
    """A console script of this Python environment first (what the user installed), then anything on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def launch_command(recipe_args: list[str], nproc: int, config: Path | None, device: str,
                   nodes: Nodes = Nodes()) -> list[str]:
    """The command that starts ``nproc`` workers on this node, each running ``dpo-cli train <recipe_args>``: what a
    user would type. ``relaunch`` runs the same launcher's entry point in a child process."""
    tail = ["-m", "dpo_cli", "train", *recipe_args]
    rendezvous = f"timeout={nodes.join_timeout}"  # the static rendezvous' wait for the other nodes (torch: 600 s)
    if device == "cpu":
        several = ["--nnodes", str(nodes.count), "--node_rank", str(nodes.rank), "--master_addr", nodes.host,
                   "--master_port", str(nodes.port), "--rdzv-conf", rendezvous] if nodes.count > 1 else []
        return [_script("torchrun") or "torchrun", "--nproc_per_node", str(nproc), *several, *tail]
    config_args = ["--config_file", str(config)] if config else []
    several = ["--num_machines", str(nodes.count), "--machine_rank", str(nodes.rank), "--main_process_ip",
               nodes.host, "--main_process_port", str(nodes.port), "--rdzv_conf", rendezvous] \
        if nodes.count > 1 else []
    return [_script("accelerate") or "accelerate", "launch", *config_args, "--num_processes",
            str(nproc * nodes.count), *several, *tail]


def relaunch(command: list[str], nodes: Nodes = Nodes()) -> int:
    """Run ``command`` (from ``launch_command``) and return the exit code to end with.

    The launcher runs in its own session, so a Ctrl-C in the terminal reaches this process alone, and each signal is
    passed on once: the first SIGTERM/SIGINT to the launcher, which hands it to every worker (each stops after its
    step with a checkpoint, and the main one says so); a second kills the workers at once. The exit code is then
    128 + the first signal's number, whatever the launcher ends with."""
    console.note("running: " + shlex.join(command))
    if waiting := nodes.waiting():
        console.note(waiting)
    kind, args = ("torchrun", command[1:]) if Path(command[0]).name == "torchrun" else ("accelerate", command[2:])
    env = {**os.environ, "DPO_CLI_RENDEZVOUS": f"{nodes.count} {nodes.host}:{nodes.port} {nodes.join_timeout}"}
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(STOP_TIMEOUT))
    child = subprocess.Popen([sys.executable, "-m", "dpo_cli.train.launch", kind, *args], env=env,
                             start_new_session=True)
    stops: list[int] = []

    def forward(signum, frame) -> None:
        stops.append(signum)
        if len(stops) == 1:
            child.send_signal(signum)
            return
        import psutil  # accelerate's dependency

        # SIGKILL: a worker blocked in a collective runs no Python signal handler until the collective returns
        with contextlib.suppress(psutil.Error):
            for worker in psutil.Process(child.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    worker.kill()
        if len(stops) == 2:
            console.error(f"a second {signal.Signals(signum).name}: the workers were killed at once (a checkpoint "
                          f"they had not finished is left incomplete, and --resume auto skips it)")

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()  # a handler that returns lets wait() go on
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + stops[0] if stops else code


def _launcher_main(kind: str, args: list[str]) -> int:
    """torchrun's or accelerate launch's entry point, with what they raise turned into an exit code and at most one
    line: a stop and a worker's failure are told by the workers; a rendezvous that never completes, by us."""
    quiet = os.environ.get("DPO_CLI_DEBUG") != "1"
    if quiet:  # c10d's C++ log of each failed try to reach node 0 (with a stack); the workers keep their own level
        level = os.environ.get("TORCH_CPP_LOG_LEVEL")
        os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    import torch  # noqa: F401 (it reads TORCH_CPP_LOG_LEVEL once, as it loads)

    if quiet:
        del os.environ["TORCH_CPP_LOG_LEVEL"]
        if level is not None:
            os.environ["TORCH_CPP_LOG_LEVEL"] = level
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    if kind == "torchrun":
        from torch.distributed.run import parse_args, run

        def start():
            run(parse_args(args))
    else:
        from accelerate.commands.launch import launch_command, launch_command_parser

        def start():
            launch_command(launch_command_parser().parse_args(args))
    if quiet:
        import logging

        # the launcher logs each signal it passes on, per worker: the stop we asked for, which the workers report
        for name in ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api"):
            logging.getLogger(name).addFilter(lambda record: not any(
                words in record.getMessage() for words in ("death signal", "closing signal")))
    try:
        start()
    except SignalException as exc:  # forwarded to the workers, which said how they stopped
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode >= 0:  # the worker printed its own error
            return failure.exitcode
        name = signal.Signals(-failure.exitcode).name
        console.error(f"worker rank {rank} was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else ""))
        return 128 - failure.exitcode
    except ImportError as exc:  # accelerate launch of a DeepSpeed config without deepspeed installed
        console.error(f"{kind}: {exc}")
        return 1
    except (DistError, RendezvousError) as exc:
        count, endpoint, timeout = os.environ.get("DPO_CLI_RENDEZVOUS", "1 ? ?").split()
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        if count == "1":
            console.error(f"{kind} could not bring its processes together: {reason}")
            return 1
        console.error(f"the {count} nodes did not all join at {endpoint} within {timeout} s (--join-timeout): "
                      f"{reason}. Start the same command on every node with its --node-rank, and check that node 0's "
                      f"address and port are reachable from the others")
        return 1
    except Exception as exc:
        # a signal that lands on the first line of torch's metrics wrapper (`start = time.time()`) leaves `start`
        # unbound, and its `finally` raises UnboundLocalError over the SignalException; the agent has still stopped
        # the workers, so it is the same stop
        stop = _signal_under(exc, SignalException)
        if stop is None:
            raise
        return 128 + int(stop.sigval)
    return 0


def _signal_under(exc: BaseException | None, kind: type[Exception]) -> Exception | None:
    """The exception of `kind` that `exc` was raised while handling, if any."""
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__context__
    return exc


if __name__ == "__main__":
    sys.exit(_launcher_main(sys.argv[1], sys.argv[2:]))
