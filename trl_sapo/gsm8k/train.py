# Copyright 2026 The trl-sapo developers. Licensed under the Apache License, Version 2.0.
"""Train a causal LM on GSM8K with SAPO (Soft Adaptive Policy Optimization) — the `trl grpo` recipe, SAPO loss.

Every `SAPOConfig` / `GRPOConfig` / `TrainingArguments` option, every `trl.ModelConfig` option (LoRA, dtype,
attention, quantization) and the GSM8K options of `GSM8KScriptArguments` are flags; `--config recipe.yaml` sets them
from YAML, and flags given on the command line override the YAML. `trl-sapo-gsm8k --help` lists them all.

Installed (`pip install trl-sapo`), the same entry point runs three ways:

    trl-sapo-gsm8k --config recipe.yaml                                  # console script, one process
    python -m trl_sapo.gsm8k.train --config recipe.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m trl_sapo.gsm8k.train --config recipe.yaml

From a checkout `scripts/gsm8k_sapo.py` is the same program (`accelerate launch scripts/gsm8k_sapo.py ...`); its
docstring lists the launch commands for 1 GPU, DDP, DeepSpeed, FSDP2, LoRA, vLLM server mode and multi-node.

Asynchronous training: `async_rollouts: true` in the recipe (or `--async_rollouts true`) parses AsyncSAPOConfig and
trains with `AsyncSAPOTrainer` on the same path (recipes/*_async.yaml); the synchronous trainer's options it lacks
(reward_weights, beta, use_vllm, ...) are refused (trl_sapo/cli/async_args.py).

Resume: run the same command again; it continues from the latest checkpoint in output_dir (and says so).
`--resume_from_checkpoint true|false|auto|PATH` chooses explicitly (trl_sapo/checkpoints.py).

Pre-emption: on SIGTERM the trainer saves a checkpoint after the current optimizer step (`save_on_sigterm`); `main`
then exits with status `PREEMPTED_EXIT_CODE` (0) at once, so nothing after training (final save, merge, Hub push)
runs inside the scheduler's grace period.

Precision: GRPOConfig turns bf16 on by default. On a machine without a bf16-capable accelerator the parser defaults
to `bf16=False` (and to `use_cpu=True` when there is no accelerator at all, which multi-process CPU runs need) and
logs a warning; a `bf16`/`use_cpu` value given in the YAML or on the command line is always used as given.

This is a recipe of `trl-sapo grpo` (trl_sapo/cli/grpo.py): the GSM8K options, argument checks and data/reward
loading are in `trl_sapo.gsm8k.recipe`; the training path both share (lock, resume, trainer, save, merge, push; a
user error prints its message and exits 2) in `trl_sapo.cli.training`; precision defaults and launcher checks in
`trl_sapo.launch`.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import TrainerCallback
from trl import ModelConfig

from ..cli.training import TrainingPlan, run_entry_point, run_training, user_errors
from ..config import SAPOConfig
from ..trainer import SAPOTrainer
from .recipe import GSM8KScriptArguments, check_args, hub_dataset_name, load_reward_funcs, load_split, parse_args

PROG = "trl-sapo-gsm8k"


def train_gsm8k(
    script_args: GSM8KScriptArguments,
    training_args: SAPOConfig,  # or AsyncSAPOConfig (async_rollouts): AsyncSAPOTrainer
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> SAPOTrainer:
    """Train on GSM8K: the recipe's data (`load_split`: prompts with the `answer` column), rewards and model card on
    the shared path of `trl-sapo grpo` (trl_sapo/cli/training.py `run_training`: lock, resume, train, save, merge,
    push). Returns the trainer (its process group is already closed).

    A run stopped by SIGTERM returns right after its checkpoint is saved, with `trainer.preempted` True and nothing
    else done; the caller decides how to exit (`main` exits with `PREEMPTED_EXIT_CODE`)."""
    with user_errors():
        check_args(script_args, training_args, model_args)

    def load_datasets():
        train_dataset = load_split(
            script_args, script_args.dataset_train_split, script_args.num_train_examples, training_args.seed
        )
        eval_dataset = None
        if training_args.eval_strategy != "no":
            eval_dataset = load_split(
                script_args, script_args.dataset_test_split, script_args.num_eval_examples, training_args.seed
            )
        return train_dataset, eval_dataset

    plan = TrainingPlan(
        load_rewards=lambda: load_reward_funcs(
            script_args.reward_funcs, training_args.max_completion_length, script_args.soft_punish_cache
        ),
        load_datasets=load_datasets,
        dataset_name=hub_dataset_name(script_args.dataset_name),
        description=f"problems from {script_args.dataset_name}",
        tags=["gsm8k"],
        merge_adapter_on_save=script_args.merge_adapter_on_save,
    )
    return run_training(plan, training_args, model_args, callbacks=callbacks)


def main(argv: Sequence[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> None:
    """Command line entry point (`trl-sapo-gsm8k`, `python -m trl_sapo.gsm8k.train`, `scripts/gsm8k_sapo.py`):
    parse `argv` (default: `sys.argv[1:]`; `--config recipe.yaml` plus flags), train, and exit the process with
    `PREEMPTED_EXIT_CODE` when SIGTERM stopped the run after its checkpoint. A user error (a bad option, data row or
    resume choice) prints `trl-sapo-gsm8k: error: <message>` and exits with status 2, without a traceback."""

    def parse_and_train():
        with user_errors():
            parsed = parse_args(None if argv is None else list(argv))
        return train_gsm8k(*parsed, callbacks=callbacks)

    run_entry_point(PROG, parse_and_train)


if __name__ == "__main__":
    main()
