# Copyright 2026 The trl-sapo developers. Licensed under the Apache License, Version 2.0.
"""`trl grpo` with the SAPO loss: TRL 1.16's trl/scripts/grpo.py on `SAPOTrainer` / `SAPOConfig`.

The options are `trl grpo`'s (`GRPOScriptArguments`, `ModelConfig`, `DatasetMixtureConfig`) with `SAPOConfig` in
place of `GRPOConfig`, so a `trl grpo` recipe runs unchanged and SAPO's keys (`sapo_tau_pos`, ...) are additions.
Three ways to run it:

    trl-sapo grpo --config recipe.yaml [--flag value ...]        # validates here, then starts `accelerate launch`
    accelerate launch --config_file ddp.yaml -m trl_sapo.cli.grpo --config recipe.yaml
    python -m trl_sapo.cli.grpo --config recipe.yaml

Where it differs from `trl grpo`, it says so instead of running something else: reward names and dotted paths,
dataset splits and reward columns are checked before any model loads; `resume_from_checkpoint` takes
true/false/auto/PATH (trl_sapo/checkpoints.py); an FSDP launch that accelerate would run as plain DDP on CPU is
refused; a second run into the same output_dir is refused (trl_sapo/run_lock.py); user errors print one line and
exit 2; SIGTERM saves a checkpoint and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from trl import DatasetMixtureConfig, ModelConfig, TrlParser
from trl.scripts.grpo import GRPOScriptArguments

from ..checkpoints import document_resume_option
from ..config import SAPOConfig
from ..launch import check_model_revision, parse_with_precision_defaults, precision_defaults
from .async_args import async_model_config, check_async_args, is_async_config
from .rewards import grpo_reward_registry, resolve_reward_funcs
from .training import TrainingPlan, UsageError, run_entry_point, run_training, user_errors

logger = logging.getLogger(__name__)

PROG = "trl-sapo grpo"
USAGE = "%(prog)s [--config recipe.yaml] [--flag value ...] [accelerate launch options]"
DESCRIPTION = """\
Train with SAPO (Soft Adaptive Policy Optimization): TRL's `trl grpo` with the SAPO loss. Every `trl grpo` option
works as there, plus the SAPOConfig ones (sapo_tau_pos, sapo_tau_neg, use_sapo_loss, ...).

With a recipe:  %(prog)s --config recipe.yaml [--flag value ...]

Precedence: a flag on the command line > the same key in the --config YAML > the defaults listed below. The YAML may
also hold `env:` (environment variables) and `datasets:` (a dataset mixture: path, name, split, columns, fraction).

Launching: `accelerate launch` options (--accelerate_config NAME|PATH with TRL's names single_gpu, multi_gpu, zero1,
zero2, zero3, fsdp1, fsdp2 or a file; --num_processes, --main_process_port, ...) may be given as flags or YAML keys;
they go to accelerate, everything else to the training processes.
"""


@dataclass
class SAPOScriptArguments(GRPOScriptArguments):
    """`trl grpo`'s script arguments (dataset, reward model, reward functions); the reward names this project adds."""

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: TRL's `accuracy_reward` (dataset column `solution`), "
            "`reasoning_accuracy_reward`, `think_format_reward`, `get_soft_overlong_punishment` (max_completion_len="
            "1280, soft_punish_cache=256); this project's `gsm8k_accuracy` (column `answer` ending in '#### <number>') "
            "and `gsm8k_format`; or any dotted import path (e.g. 'my_lib.rewards.custom_reward')."
        },
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's lines; lists defaults like HfArgumentParser does."""


def make_parser(prog: str | None = None, config_class: type = SAPOConfig, description: str = DESCRIPTION) -> TrlParser:
    """TrlParser over (SAPOScriptArguments, SAPOConfig, ModelConfig, DatasetMixtureConfig), as TRL 1.16's
    `trl.scripts.grpo.make_parser` with SAPOConfig for GRPOConfig; precision defaults for machines without bf16.

    `config_class=AsyncSAPOConfig` (`trl-sapo async-grpo`): `--dtype` is the config's (`async_model_config`)."""
    model_config = ModelConfig if config_class is SAPOConfig else async_model_config()
    dataclass_types = (SAPOScriptArguments, config_class, model_config, DatasetMixtureConfig)
    parser = TrlParser(
        dataclass_types, prog=prog or PROG, usage=USAGE, description=description, formatter_class=_HelpFormatter
    )
    parser.set_defaults(**precision_defaults())
    document_resume_option(parser)  # true / false / auto / path, resolved by trl_sapo.checkpoints
    return parser


def accelerate_options() -> dict[str, bool]:
    """`accelerate launch`'s option names (no dashes; underscore and hyphen spellings) -> whether it takes a value."""
    from accelerate.commands.launch import launch_command_parser

    options = {"accelerate_config": True}  # TRL's alias, resolved to --config_file
    for action in launch_command_parser()._actions:
        options.update({option.lstrip("-").replace("-", "_"): action.nargs != 0 for option in action.option_strings})
    return options


def parse_args(argv: Sequence[str] | None = None, parser: TrlParser | None = None):
    """`(script_args, training_args, model_args, dataset_args, config_remaining, cli_remaining)`: flags win over the
    `--config` YAML; the remaining strings are what the parser did not consume (accelerate options, or mistakes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = parser or make_parser()
    return parse_with_precision_defaults(parser, argv, return_remaining_strings=True, separate_remaining_strings=True)


def reject_unknown(strings: Sequence[str], where: str, keys_only: bool = False) -> None:
    """Raise `UsageError` unless `strings` (what TrlParser left) are `accelerate launch` options and their values
    (`keys_only`: option names alone, e.g. the keys of the YAML's leftover pairs)."""
    options = accelerate_options()
    unknown, expect_value = [], False
    for token in strings:
        name = token.lstrip("-").split("=")[0].replace("-", "_")
        if expect_value:
            expect_value = False
        elif not token.startswith("-") or name not in options:
            unknown.append(token)
        else:
            expect_value = options[name] and "=" not in token and not keys_only
    if unknown:
        raise UsageError(
            f"unknown option(s) {unknown} {where}: neither a `{PROG}` option (see --help) nor an `accelerate launch` "
            "one."
        )


def reject_remaining(config_remaining: list[str], cli_remaining: list[str], launcher: bool) -> tuple[list, list]:
    """Raise `UsageError` for what TrlParser left that is not an `accelerate launch` option (`launcher`: the
    `trl-sapo` command, which passes them on; otherwise the training process, where they come too late). Returns
    the two lists (`trl-sapo async-grpo` drops the harmless ones it accepts)."""
    # accelerate options in the YAML are for the launcher; anything else is a mistake.
    reject_unknown(config_remaining[::2], "in the --config YAML", keys_only=True)
    if launcher:
        reject_unknown(cli_remaining, "on the command line")
    elif cli_remaining:
        raise UsageError(f"unknown option(s) {cli_remaining}; `accelerate launch` options go before `-m`.")
    return config_remaining, cli_remaining


def check_args(script_args, training_args: SAPOConfig, model_args: ModelConfig, dataset_args) -> None:
    """Reject what would fail late (after model loading) or be silently ignored; resolve the rewards once."""
    if is_async_config(training_args):  # `trl-sapo async-grpo`
        check_async_args(training_args, model_args, script_args.reward_model_name_or_path)
    if not model_args.model_name_or_path:
        raise UsageError("`model_name_or_path` is required (a Hub id or a local model folder).")
    if not dataset_args.datasets and not script_args.dataset_name:
        raise UsageError("Either `datasets` (a mixture, in the YAML) or `dataset_name` must be provided.")
    if not script_args.reward_funcs and not script_args.reward_model_name_or_path:
        raise UsageError("No reward: give --reward_funcs NAME|dotted.path ... and/or --reward_model_name_or_path.")
    if script_args.ignore_bias_buffers:
        raise UsageError("`ignore_bias_buffers` is a `trl dpo` option; GRPO/SAPO training does not use it.")
    with user_errors():
        check_model_revision(model_args.model_name_or_path, model_args.model_revision)
        load_rewards(script_args)


def load_rewards(script_args) -> list:
    """The reward model path (first, as `trl grpo` orders them) and the reward functions, resolved and checked."""
    rewards = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    return rewards + resolve_reward_funcs(script_args.reward_funcs or [], grpo_reward_registry())


def load_datasets(script_args, training_args: SAPOConfig, dataset_args) -> tuple:
    """`(train, eval or None)` as trl/scripts/grpo.py (TRL 1.16) loads them, with a clear error for a missing split."""
    from datasets import load_dataset
    from trl import get_dataset

    # Load the dataset (TRL 1.16 trl/scripts/grpo.py, `main`, "Load the dataset" block)
    if dataset_args.datasets and script_args.dataset_name:
        logger.warning(
            "Both `datasets` and `dataset_name` are provided. The `datasets` argument will be used to load the "
            "dataset and `dataset_name` will be ignored."
        )
        dataset = get_dataset(dataset_args)
    elif dataset_args.datasets and not script_args.dataset_name:
        dataset = get_dataset(dataset_args)
    else:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    splits = [script_args.dataset_train_split]
    if training_args.eval_strategy != "no":
        splits.append(script_args.dataset_test_split)
    for split in splits:
        if split not in dataset:
            hint = (
                " (a `datasets:` mixture has a test split only with `test_split_size`)"
                if dataset_args.datasets
                else ""
            )
            raise ValueError(f"the dataset has no split {split!r}; its splits: {sorted(dataset)}{hint}.")
    eval_dataset = dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None
    return dataset[script_args.dataset_train_split], eval_dataset


def main(script_args, training_args: SAPOConfig, model_args: ModelConfig, dataset_args, callbacks=None):
    """Train as `trl grpo` does, on the shared path (trl_sapo/cli/training.py). Returns the trainer."""
    check_args(script_args, training_args, model_args, dataset_args)
    plan = TrainingPlan(
        load_rewards=lambda: load_rewards(script_args),
        load_datasets=lambda: load_datasets(script_args, training_args, dataset_args),
        dataset_name=None if dataset_args.datasets else script_args.dataset_name,
        description=f"from {script_args.dataset_name or 'a dataset mixture'}",
        tags=["sapo"],
    )
    return run_training(plan, training_args, model_args, callbacks=callbacks)


def cli_main(argv: Sequence[str] | None = None, callbacks=None, command=None) -> None:
    """`python -m trl_sapo.cli.grpo` / `accelerate launch -m trl_sapo.cli.grpo`: parse, train, exit 2 with the
    message on a user error, `PREEMPTED_EXIT_CODE` after a SIGTERM checkpoint. `command`: the module whose `PROG`,
    `parse_args` and `reject_remaining` to use (default this one; `trl_sapo.cli.async_grpo` passes itself)."""
    command = command or sys.modules[__name__]

    def parse_and_train():
        with user_errors():
            *parsed, config_remaining, cli_remaining = command.parse_args(argv)
        command.reject_remaining(config_remaining, cli_remaining, launcher=False)
        return main(*parsed, callbacks=callbacks)

    run_entry_point(command.PROG, parse_and_train)


if __name__ == "__main__":
    cli_main()
