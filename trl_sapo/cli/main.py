# Copyright 2026 The trl-sapo developers. Licensed under the Apache License, Version 2.0.
"""The `trl-sapo` command line: `trl-sapo grpo ...` is `trl grpo ...` with the SAPO loss.

Built from TRL 1.16's CLI (trl/cli/main.py, trl/cli/commands/training.py `TrainingCommand.run`,
trl/cli/accelerate_launcher.py): every argument is parsed and validated here, in the calling process, then
`accelerate launch` starts the training module (`-m trl_sapo.cli.grpo`) with the training arguments, and the
`accelerate launch` options (flags or YAML keys, `--accelerate_config NAME|PATH`) configure the launch. Subcommands
are `SAPOTrainingCommand`s in `COMMANDS`: a new training mode (e.g. an asynchronous one) is one more entry.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
from argparse import ArgumentParser, Namespace

import yaml
from trl.cli.accelerate_config import resolve_accelerate_config_argument
from trl.cli.commands.base import Command, CommandContext
from trl.cli.commands.training import _subtract_subsequence

from .training import UsageError, exit_on_user_error, user_errors


def launch_args_from_config(config_remaining: list[str]) -> list[str]:
    """The `--key value` pairs TrlParser left over from the YAML, as `accelerate launch` takes them: a switch
    (`cpu: true`) becomes `--cpu`, `false` drops it (TRL would pass the value on and it would become the script)."""
    from accelerate.commands.launch import launch_command_parser

    switches = {
        option.lstrip("-").replace("-", "_")
        for action in launch_command_parser()._actions
        if action.nargs == 0
        for option in action.option_strings
    }
    args = []
    for key, value in zip(config_remaining[::2], config_remaining[1::2]):
        if key.lstrip("-") in switches:
            args += [key] if yaml.safe_load(value) else []
        else:
            args += [key, value]
    return args


CPU_CONFIGS_HINT = (
    "On CPU use a DDP or DeepSpeed config with `use_cpu: true` (e.g. accelerate_configs/cpu_2proc_ddp.yaml or "
    "cpu_2proc_zero2.yaml in the trl-sapo repository), or run one process: `trl-sapo grpo ...` without "
    "--accelerate_config."
)


def check_accelerate_backend(launch_args: list[str]) -> None:
    """On a machine without an accelerator, refuse accelerate configs that cannot do what they say: FSDP (accelerate
    1.15 would silently run plain DDP) and several GPU processes without `use_cpu` (each would train alone). The
    training processes refuse both too, after starting; this says it before anything starts."""
    import torch

    if "--config_file" not in launch_args or torch.accelerator.is_available():
        return
    path = launch_args[launch_args.index("--config_file") + 1]
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if config.get("distributed_type") == "FSDP":
        raise UsageError(
            f"{path} asks for FSDP, which accelerate runs only on GPUs/accelerators; on this machine (no GPU) it would "
            f"train with plain data parallelism instead. {CPU_CONFIGS_HINT}"
        )
    num_processes = int(_launch_option(launch_args, "--num_processes") or config.get("num_processes") or 1)
    use_cpu = config.get("use_cpu") or "--cpu" in launch_args
    if config.get("distributed_type") in ("MULTI_GPU", "DEEPSPEED") and num_processes > 1 and not use_cpu:
        raise UsageError(
            f"{path} starts {num_processes} GPU processes, but this machine has no GPU: each process would train "
            f"alone. {CPU_CONFIGS_HINT}"
        )


def _launch_option(launch_args: list[str], option: str) -> str | None:
    """The value of `option` among accelerate's launch arguments (last one wins, as in argparse), or None."""
    values = [launch_args[i + 1] for i, arg in enumerate(launch_args[:-1]) if arg == option]
    return values[-1] if values else None


def launched_num_processes(all_args: list[str]) -> int:
    """How many training processes `accelerate launch` will start for these arguments: `num_processes` as a flag or
    YAML key, else that of the accelerate config (`--accelerate_config`/`--config_file`, flag or YAML key, else
    accelerate's default config file), else 1."""
    from accelerate.commands.config.config_args import default_config_file

    config = {}
    if "--config" in all_args:
        with open(all_args[all_args.index("--config") + 1]) as f:
            config = yaml.safe_load(f) or {}

    def value(name: str):
        flags = {f"--{name}", f"--{name.replace('_', '-')}"}
        given = [all_args[i + 1] for i, arg in enumerate(all_args[:-1]) if arg in flags]
        return given[-1] if given else config.get(name)

    if value("num_processes") is not None:
        return int(value("num_processes"))
    accelerate_config = value("accelerate_config")
    if accelerate_config is not None:
        path = resolve_accelerate_config_argument(["--accelerate_config", str(accelerate_config)])[1]
    else:
        path = value("config_file") or (default_config_file if os.path.isfile(default_config_file) else None)
    if path is None:
        return 1
    with open(path) as f:
        return int((yaml.safe_load(f) or {}).get("num_processes") or 1)


@contextlib.contextmanager
def _world_size(num_processes: int):
    """`TrainingArguments.world_size` is `num_processes` inside the block: the calling process checks the batch sizes
    (GRPOConfig: generation batch divisible by num_generations, ...) for the launch it will start, not for itself."""
    from transformers import TrainingArguments

    original = TrainingArguments.__dict__["world_size"]
    TrainingArguments.world_size = property(lambda self: num_processes)
    try:
        yield
    finally:
        TrainingArguments.world_size = original


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Only errors from logger `name` inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class SAPOTrainingCommand(Command):
    """`trl-sapo <name> ...`: validate with `<module>.make_parser`/`check_args`, then `accelerate launch -m <module>`
    (TRL 1.16 `TrainingCommand`, with this package's modules and validation before the launch)."""

    def __init__(self, name: str, module: str, help_text: str):
        super().__init__(name=name, help_text=help_text)
        self.module = module

    def register(self, subparsers) -> None:
        subparsers.add_parser(self.name, help=self.help_text, add_help=False)

    def split_args(self, all_args: list[str]) -> tuple[list[str], list[str]]:
        """`(launch_args, training_script_args)` after validating every training argument; exits on `--help`."""
        module = importlib.import_module(self.module)
        parser = module.make_parser(prog=f"trl-sapo {self.name}")
        # The training processes parse the same arguments and give the precision warning; once is enough.
        with user_errors():
            num_processes = launched_num_processes(all_args)
        with user_errors(), _quiet_logger("trl_sapo.launch"), _world_size(num_processes):
            *parsed, config_remaining, cli_remaining = module.parse_args(all_args, parser=parser)
        config_remaining, cli_remaining = module.reject_remaining(config_remaining, cli_remaining, launcher=True)
        module.check_args(*parsed)
        with user_errors():
            launch_args = resolve_accelerate_config_argument(launch_args_from_config(config_remaining) + cli_remaining)
        check_accelerate_backend(launch_args)
        return launch_args, _subtract_subsequence(all_args, cli_remaining)

    def run(self, args: Namespace, context: CommandContext) -> int:
        from accelerate.commands.launch import launch_command, launch_command_parser
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        prog = f"trl-sapo {self.name}"
        launch_args, training_script_args = exit_on_user_error(
            prog, lambda: self.split_args(context.argv_after(self.name))
        )
        accelerate_args = launch_command_parser().parse_args(
            [*launch_args, "--module", self.module, *training_script_args]
        )

        # The training processes print their own errors; the launcher's traceback around them would add nothing.
        try:
            launch_command(accelerate_args)
        except subprocess.CalledProcessError as err:  # one process (accelerate's simple launcher)
            return err.returncode
        except ChildFailedError as err:  # several processes (torchrun, DeepSpeed)
            rank, failure = err.get_first_failure()
            print(f"{prog}: training process {rank} failed (exit code {failure.exitcode}).", file=sys.stderr)
            return failure.exitcode if failure.exitcode > 0 else 1
        return 0


COMMANDS: list[Command] = [
    SAPOTrainingCommand("grpo", "trl_sapo.cli.grpo", "Train with SAPO: `trl grpo` with the SAPO loss"),
    SAPOTrainingCommand(
        "async-grpo",
        "trl_sapo.cli.async_grpo",
        "Train with SAPO on asynchronous rollouts (AsyncSAPOTrainer): `trl-sapo grpo` with a rollout worker",
    ),
]


def main(argv: list[str] | None = None) -> int:
    """Run the `trl-sapo` CLI (TRL 1.16 trl/cli/main.py `main`, with this package's commands)."""
    commands_by_name = {command.name: command for command in COMMANDS}
    parser = ArgumentParser(
        prog="trl-sapo",
        allow_abbrev=False,
        description="SAPO training from the command line: `trl-sapo grpo` takes every `trl grpo` argument and "
        "recipe, plus the SAPOConfig options; `trl-sapo async-grpo` trains the same way on asynchronous rollouts "
        "(AsyncSAPOTrainer). `trl-sapo <command> --help` lists the options.",
    )
    subparsers = parser.add_subparsers(help="available commands", dest="command")
    for command in COMMANDS:
        command.register(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)

    args, _ = parser.parse_known_args(argv)
    command_name = getattr(args, "command", None)
    if command_name is None:
        parser.print_help()
        return 0
    return commands_by_name[command_name].run(args, CommandContext(argv=argv))


if __name__ == "__main__":
    raise SystemExit(main())
