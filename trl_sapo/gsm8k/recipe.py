"""The GSM8K recipe's command line: its options, the parser, argument checks, reward and dataset loading.

`scripts/gsm8k_sapo.py` is the entry point (`main()`); what it needs beyond TRL lives here, importable and tested.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from ..checkpoints import document_resume_option
from ..config import SAPOConfig
from ..launch import parse_with_precision_defaults, precision_defaults

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_OUTPUT_DIR = "outputs/gsm8k-sapo"


@dataclass
class GSM8KScriptArguments:
    """Data and reward options of the GSM8K recipe (training options live in `SAPOConfig`, model ones in
    `trl.ModelConfig`)."""

    dataset_name: str = field(
        default="openai/gsm8k",
        metadata={
            "help": "Hub dataset (e.g. 'openai/gsm8k'), a local .jsonl/.json file or a folder with <split>.jsonl "
            "files (e.g. ../shared/data/gsm8k), or 'synthetic' for offline generated GSM8K-style problems, with "
            "optional difficulty knobs: 'synthetic:num_steps=2-3,max_value=50'. Rows need `question` and `answer` "
            "(ending in '#### <number>')."
        },
    )
    dataset_config: str | None = field(
        default="main", metadata={"help": "Hub dataset configuration name (GSM8K: 'main' or 'socratic')."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on (only used when eval_strategy != 'no')."}
    )
    num_train_examples: int | None = field(
        default=None, metadata={"help": "Use a random subset of this many training problems (seeded by `seed`)."}
    )
    num_eval_examples: int | None = field(
        default=None, metadata={"help": "Use a random subset of this many evaluation problems (seeded by `seed`)."}
    )
    skip_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop rows without a question or a '#### <number>' answer (their count is logged) instead of "
            "failing on the first one."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System message of every prompt. Default: trl_sapo.gsm8k.data.SYSTEM_PROMPT (reason step by step, "
            "end with '#### <number>', the format the `format` reward checks). Pass '' for no system message."
        },
    )
    num_few_shot: int = field(
        default=0,
        metadata={
            "help": "Number (0-4) of hand-written worked examples (trl_sapo.gsm8k.data.FEW_SHOT_EXAMPLES) prepended to "
            "each prompt as user/assistant turns."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={
            "help": "Reward functions: 'accuracy' (final answer equals the reference), 'format' (last line is "
            "'#### <number>'), 'overlong' (DAPO's soft overlong punishment: 0, then down to -1 over the last "
            "`soft_punish_cache` tokens before max_completion_length), or dotted import paths "
            "'my_pkg.my_module.my_reward' (TRL's reward signature). Weight them with `reward_weights`."
        },
    )
    soft_punish_cache: int | None = field(
        default=None,
        metadata={
            "help": "Tokens before max_completion_length over which the `overlong` reward falls from 0 to -1 "
            "(default max_completion_length // 6). Only read with 'overlong' in reward_funcs."
        },
    )
    async_rollouts: bool = field(
        default=False,
        metadata={
            "help": "Train asynchronously: AsyncSAPOTrainer with AsyncSAPOConfig's options (rollout_backend, "
            "max_staleness, fixed_lag, ...; see recipes/smollm2-135m_cpu_async.yaml). Options of the synchronous "
            "trainer it lacks (reward_weights, beta, use_vllm, vllm_mode, ...) and eval are refused."
        },
    )
    merge_adapter_on_save: bool = field(
        default=False,
        metadata={
            "help": "With use_peft: after training, also merge the LoRA adapter into the base weights and save the "
            "full model (and tokenizer) to <output_dir>/merged."
        },
    )


def make_parser(async_rollouts: bool = False) -> TrlParser:
    """TrlParser over (GSM8KScriptArguments, SAPOConfig, ModelConfig) with this recipe's defaults; with
    `async_rollouts`, AsyncSAPOConfig for SAPOConfig (and its `--dtype` for ModelConfig's)."""
    dataclass_types = (GSM8KScriptArguments, SAPOConfig, ModelConfig)
    if async_rollouts:
        from ..async_sapo import AsyncSAPOConfig
        from ..cli.async_args import async_model_config

        dataclass_types = (GSM8KScriptArguments, AsyncSAPOConfig, async_model_config())
    parser = TrlParser(
        dataclass_types,
        description="Train a causal LM on GSM8K with SAPO. Launch commands: see the docstring of scripts/gsm8k_sapo.py.",
    )
    parser.set_defaults(model_name_or_path=DEFAULT_MODEL, output_dir=DEFAULT_OUTPUT_DIR)
    parser.set_defaults(**precision_defaults())
    document_resume_option(parser)  # true / false / auto / path, resolved by trl_sapo.checkpoints
    return parser


def wants_async(args: list[str]) -> bool:
    """The `async_rollouts` switch as the full parse will read it (flag over YAML key), read first because it
    chooses the config class."""
    switch_parser = TrlParser([_AsyncSwitch])
    switch, _ = switch_parser.parse_args_and_config(
        [arg for arg in args if arg not in ("-h", "--help")], return_remaining_strings=True
    )
    return switch.async_rollouts


@dataclass
class _AsyncSwitch:
    async_rollouts: bool = False


def parse_args(args: list[str] | None = None) -> tuple[GSM8KScriptArguments, SAPOConfig, ModelConfig]:
    """Parse `--config recipe.yaml` and command-line flags (which win) into the three argument dataclasses; with
    `async_rollouts` the config is an AsyncSAPOConfig, and the synchronous trainer's options are refused."""
    from ..cli.async_args import async_only_fields, refuse_sync_only

    args = list(sys.argv[1:] if args is None else args)
    async_rollouts = wants_async(args)
    *parsed, config_remaining, cli_remaining = parse_with_precision_defaults(
        make_parser(async_rollouts), args, return_remaining_strings=True, separate_remaining_strings=True
    )
    if async_rollouts:
        config_remaining = refuse_sync_only(config_remaining, "in the --config YAML")
        cli_remaining = refuse_sync_only(cli_remaining, "on the command line")
    unknown = config_remaining[::2] + cli_remaining
    if unknown:
        keys = {arg.lstrip("-").split("=")[0] for arg in unknown}
        hint = " (AsyncSAPOConfig options: set async_rollouts: true)" if keys & async_only_fields() else ""
        raise ValueError(f"unknown option(s) {unknown}{hint}; `trl-sapo-gsm8k --help` lists the options.")
    return tuple(parsed)


def check_args(script_args: GSM8KScriptArguments, training_args: SAPOConfig, model_args: ModelConfig) -> None:
    """Reject combinations that would fail late (after model loading or training) or silently do nothing."""
    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required (a Hub id or a local model folder).")
    if script_args.merge_adapter_on_save and not model_args.use_peft:
        raise ValueError("`merge_adapter_on_save=True` needs `use_peft=True`: there is no adapter to merge.")
    if not script_args.reward_funcs:
        raise ValueError("`reward_funcs` is empty: give at least one, e.g. --reward_funcs accuracy format.")
    for name in ("num_train_examples", "num_eval_examples"):
        value = getattr(script_args, name)
        if value is not None and value <= 0:
            raise ValueError(f"`{name}` must be a positive number of examples, got {value}.")
    if script_args.num_few_shot < 0:
        raise ValueError(f"`num_few_shot` must be >= 0, got {script_args.num_few_shot}.")
    if script_args.soft_punish_cache is not None and "overlong" not in script_args.reward_funcs:
        raise ValueError("`soft_punish_cache` only configures the `overlong` reward; add 'overlong' to reward_funcs.")
    if script_args.async_rollouts:
        from ..cli.async_args import check_async_args

        check_async_args(training_args, model_args)


def load_reward_funcs(
    names: list[str], max_completion_length: int | None = None, soft_punish_cache: int | None = None
) -> list:
    """Registry names (trl_sapo.gsm8k.rewards.REWARD_NAMES) and dotted import paths, in order, resolved and checked
    like `trl-sapo grpo`'s (trl_sapo.cli.rewards); the length arguments configure the `overlong` reward."""
    from ..cli.rewards import resolve_reward_funcs
    from .rewards import REWARD_NAMES, get_reward_funcs

    registry = {
        name: lambda name=name: get_reward_funcs([name], max_completion_length, soft_punish_cache)[0]
        for name in REWARD_NAMES
    }
    return resolve_reward_funcs(names, registry)


def resolve_system_prompt(system_prompt: str | None) -> str:
    """The recipe's `system_prompt` as the prompts get it: None -> the default SYSTEM_PROMPT, '' -> no system message."""
    from .data import SYSTEM_PROMPT

    return SYSTEM_PROMPT if system_prompt is None else system_prompt


def load_split(script_args: GSM8KScriptArguments, split: str, num_examples: int | None, seed: int):
    """One split as TRL conversational prompts (`prompt`) with the reference `answer` column for the rewards."""
    from .data import load_gsm8k, to_prompts

    dataset = load_gsm8k(
        script_args.dataset_name,
        split=split,
        config_name=script_args.dataset_config,
        num_examples=num_examples,
        seed=seed,
        skip_invalid=script_args.skip_invalid_rows,
    )
    system_prompt = resolve_system_prompt(script_args.system_prompt)
    return to_prompts(dataset, system_prompt=system_prompt, num_few_shot=script_args.num_few_shot)


def hub_dataset_name(dataset_name: str) -> str | None:
    """The dataset id for the model card: Hub ids only (no local paths, no 'synthetic' generator)."""
    if dataset_name.startswith("synthetic") or os.path.exists(dataset_name):
        return None
    return dataset_name
