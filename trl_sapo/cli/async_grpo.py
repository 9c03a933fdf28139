# Copyright 2026 The trl-sapo developers. Licensed under the Apache License, Version 2.0.
"""`trl-sapo async-grpo`: `trl-sapo grpo` on `AsyncSAPOTrainer` / `AsyncSAPOConfig` (rollouts from a background
worker, up to `max_staleness` policy versions old; TRL 1.16's `trl.experimental.async_grpo` underneath).

The arguments are `trl-sapo grpo`'s with AsyncSAPOConfig in place of SAPOConfig, checked the same way before the
launch; the options the async trainer cannot honour (reward_weights, beta, use_vllm/vllm_mode, reward models,
quantization, eval, ... : trl_sapo/cli/async_args.py) are refused with the reason. Three ways to run it:

    trl-sapo async-grpo --config recipe.yaml [--flag value ...]
    accelerate launch --config_file ddp.yaml -m trl_sapo.cli.async_grpo --config recipe.yaml
    python -m trl_sapo.cli.async_grpo --config recipe.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import grpo
from .async_args import refuse_sync_only
from .grpo import check_args, main  # noqa: F401  (the module interface `trl-sapo` calls; async checks inside)

PROG = "trl-sapo async-grpo"
DESCRIPTION = """\
Train with SAPO on asynchronous rollouts (AsyncSAPOTrainer): `trl-sapo grpo` with a background rollout worker whose
samples are up to `max_staleness` policy versions old. rollout_backend: vllm (a `trl vllm-serve` server, TRL's own
worker) or transformers (no vLLM; CPU or GPU; `fixed_lag: k` makes the staleness exact and runs reproducible).

With a recipe:  %(prog)s --config recipe.yaml [--flag value ...]

Precedence: a flag on the command line > the same key in the --config YAML > the defaults listed below. Options of the
synchronous trainer that the async one lacks (reward_weights, beta, use_vllm, vllm_mode, num_iterations, ...),
reward models, quantization and evaluation are refused with the reason.

Launching: `accelerate launch` options (--accelerate_config NAME|PATH, --num_processes, ...) may be given as flags or
YAML keys; they go to accelerate, everything else to the training processes.
"""


def make_parser(prog: str | None = None):
    """`trl-sapo grpo`'s parser with AsyncSAPOConfig for SAPOConfig."""
    from ..async_sapo import AsyncSAPOConfig

    return grpo.make_parser(prog or PROG, config_class=AsyncSAPOConfig, description=DESCRIPTION)


def parse_args(argv: Sequence[str] | None = None, parser=None):
    """As `trl_sapo.cli.grpo.parse_args`, with this command's parser."""
    return grpo.parse_args(argv, parser=parser or make_parser())


def reject_remaining(config_remaining: list[str], cli_remaining: list[str], launcher: bool) -> tuple[list, list]:
    """Refuse the synchronous trainer's options (unless given at their default value, which loses nothing), then
    as `trl-sapo grpo` (accelerate options pass, anything else is an error). Returns what is left."""
    config_remaining = refuse_sync_only(config_remaining, "in the --config YAML")
    cli_remaining = refuse_sync_only(cli_remaining, "on the command line")
    return grpo.reject_remaining(config_remaining, cli_remaining, launcher)


def cli_main(argv: Sequence[str] | None = None, callbacks=None) -> None:
    """`python -m trl_sapo.cli.async_grpo` / `accelerate launch -m trl_sapo.cli.async_grpo`."""
    grpo.cli_main(argv, callbacks, command=sys.modules[__name__])


if __name__ == "__main__":
    cli_main()
