# Copyright 2026 The trl-sapo developers. Licensed under the Apache License, Version 2.0.
"""What changes when an entry point trains with `AsyncSAPOTrainer` instead of `SAPOTrainer`: the parser (with
`AsyncSAPOConfig`), and the options the async trainer does not have, which are refused with the reason, never ignored.

Shared by `trl-sapo async-grpo` (trl_sapo/cli/async_grpo.py) and the GSM8K entry point's `async_rollouts: true`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import typing
from collections.abc import Iterator, Sequence

import yaml

from .training import UsageError, is_async_config  # noqa: F401  (re-exported)

ASYNC_SWITCH = "async_rollouts"
"""The GSM8K recipe's key/flag that selects AsyncSAPOConfig + AsyncSAPOTrainer (like TRL's `use_vllm`, `use_peft`)."""

SYNC_ONLY_REASONS = {
    "reward_weights": "the async rollout worker sums the rewards with weight 1 (TRL's AsyncGRPOTrainer has no "
    "reward_weights); scale the reward inside its function instead",
    "beta": "AsyncSAPOTrainer has no reference model and no KL term (beta must stay 0)",
    "use_vllm": "no vLLM colocate mode here: asynchronous rollouts come from a `trl vllm-serve` server with "
    "rollout_backend: vllm (vllm_server_base_url), or from rollout_backend: transformers without vLLM",
    "vllm_mode": "only vLLM server mode is supported (rollout_backend: vllm, `trl vllm-serve`); colocate is not",
    "num_iterations": "every rollout is trained on once; off-policyness comes from staleness (max_staleness, "
    "fixed_lag)",
    "steps_per_generation": "rollouts stream from the worker; batching is per_device_train_batch_size and token_budget",
}


@functools.cache
def async_model_config() -> type:
    """`trl.ModelConfig` less its `dtype` field, for parsers with AsyncSAPOConfig, which has its own `dtype` (the
    dtype AsyncGRPOTrainer loads the model in; one parser cannot hold two options of one name).
    `check_async_args` sets the instance's `dtype` to the config's."""
    from trl import ModelConfig

    types = typing.get_type_hints(ModelConfig)
    specs = [
        (
            f.name,
            types[f.name],
            dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
        )
        for f in dataclasses.fields(ModelConfig)
        if f.name != "dtype"
    ]
    namespace = {"__post_init__": ModelConfig.__post_init__, "__doc__": async_model_config.__doc__}
    return dataclasses.make_dataclass("AsyncModelConfig", specs, namespace=namespace)


def sync_only_fields() -> dict[str, dataclasses.Field]:
    """SAPOConfig's fields that AsyncSAPOConfig lacks (reward_weights, beta, use_vllm, vllm_mode, ...), by name."""
    from ..async_sapo import AsyncSAPOConfig
    from ..config import SAPOConfig

    async_names = {f.name for f in dataclasses.fields(AsyncSAPOConfig)}
    return {f.name: f for f in dataclasses.fields(SAPOConfig) if f.name not in async_names}


def async_only_fields() -> set[str]:
    """AsyncSAPOConfig's fields that SAPOConfig lacks (rollout_backend, fixed_lag, max_staleness, ...)."""
    from ..async_sapo import AsyncSAPOConfig
    from ..config import SAPOConfig

    return {f.name for f in dataclasses.fields(AsyncSAPOConfig)} - {f.name for f in dataclasses.fields(SAPOConfig)}


def option_pairs(tokens: Sequence[str]) -> Iterator[tuple[str, str | None, int]]:
    """`(name, value or None, how many tokens)` for each `--name[=value] [value ...]` in what a parser left over
    (several values are joined with spaces); a stray positional token is its own name."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            yield token, None, 1
            i += 1
            continue
        name, _, value = token[2:].partition("=")
        values = [] if value else list(itertools.takewhile(lambda t: not t.startswith("--"), tokens[i + 1 :]))
        yield name, value or " ".join(values) or None, 1 + len(values)
        i += 1 + len(values)


def _is_default(field: dataclasses.Field, text: str | None) -> bool:
    """Whether `text` (a YAML/flag value) is SAPOConfig's default for `field`: then nothing would be lost."""
    if field.default is dataclasses.MISSING or text is None:
        return False
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return text == str(field.default) or value == field.default


def refuse_sync_only(tokens: Sequence[str], where: str) -> list[str]:
    """Raise `UsageError` for a SAPOConfig option AsyncSAPOTrainer cannot honour (given with a non-default value);
    return the other tokens (accelerate options, or mistakes the caller reports)."""
    sync_only = sync_only_fields()
    rest, refused = [], []
    position = 0
    for name, value, count in option_pairs(tokens):
        key = name.replace("-", "_")
        if key in sync_only:
            if not _is_default(sync_only[key], value):
                refused.append(f"`{key}`: {SYNC_ONLY_REASONS.get(key, 'AsyncSAPOConfig has no such option')}")
        else:
            rest.extend(tokens[position : position + count])
        position += count
    if refused:
        raise UsageError(
            f"option(s) of the synchronous SAPOTrainer that AsyncSAPOTrainer does not support, {where}: "
            + "; ".join(refused)
            + ". Remove them, or train synchronously."
        )
    return rest


def check_async_args(training_args, model_args, reward_model: str | None = None) -> None:
    """Refuse what AsyncSAPOTrainer (TRL 1.16's AsyncGRPOTrainer underneath) would fail on late or ignore."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise UsageError("AsyncSAPOTrainer takes no quantization config: drop load_in_4bit / load_in_8bit.")
    if model_args.attn_implementation is not None:
        raise UsageError(
            f"attn_implementation={model_args.attn_implementation!r}: AsyncSAPOTrainer sets its own (TRL's tree "
            "attention for packed rows, a plain-torch path on CPU); remove the option."
        )
    if training_args.eval_strategy != "no":
        raise UsageError(
            "AsyncSAPOTrainer has no evaluation loop (TRL's AsyncGRPOTrainer takes no eval_dataset): set "
            "eval_strategy: no and evaluate the saved model (scripts/gsm8k_eval.py for GSM8K)."
        )
    if reward_model:
        raise UsageError(
            f"reward_model_name_or_path={reward_model!r}: the async rollout worker calls reward functions only, "
            "not reward models. Wrap the model in a reward function (a dotted path in reward_funcs)."
        )
    model_args.dtype = training_args.dtype  # one `--dtype` flag: AsyncSAPOConfig's, the dtype the model loads in
