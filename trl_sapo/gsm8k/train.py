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

Resume: run the same command again; it continues from the latest checkpoint in output_dir (and says so).
`--resume_from_checkpoint true|false|auto|PATH` chooses explicitly (trl_sapo/checkpoints.py).

Pre-emption: on SIGTERM the trainer saves a checkpoint after the current optimizer step (`save_on_sigterm`); `main`
then exits with status `PREEMPTED_EXIT_CODE` (0) at once, so nothing after training (final save, merge, Hub push)
runs inside the scheduler's grace period.

Precision: GRPOConfig turns bf16 on by default. On a machine without a bf16-capable accelerator the parser defaults
to `bf16=False` (and to `use_cpu=True` when there is no accelerator at all, which multi-process CPU runs need) and
logs a warning; a `bf16`/`use_cpu` value given in the YAML or on the command line is always used as given.

The options, argument checks and data/reward loading are in `trl_sapo.gsm8k.recipe`; precision defaults, launcher
checks and adapter merging in `trl_sapo.launch`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from transformers import TrainerCallback
from trl import ModelConfig, get_peft_config, get_quantization_config

from ..checkpoints import resolve_resume_from_checkpoint
from ..config import SAPOConfig
from ..launch import check_backend, check_world_size, merge_adapter
from ..reliability import PREEMPTED_EXIT_CODE
from ..run_lock import acquire_run_lock
from ..trainer import SAPOTrainer
from .recipe import GSM8KScriptArguments, check_args, hub_dataset_name, load_reward_funcs, load_split, parse_args


def train_gsm8k(
    script_args: GSM8KScriptArguments,
    training_args: SAPOConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> SAPOTrainer:
    """Train, save (`output_dir`: model or LoRA adapter, tokenizer, trainer_state.json, model card), optionally
    merge the adapter and push to the Hub. Returns the trainer (its process group is already closed).

    A run stopped by SIGTERM returns right after its checkpoint is saved, with `trainer.preempted` True and nothing
    else done; the caller decides how to exit (`main` exits with `PREEMPTED_EXIT_CODE`)."""
    check_args(script_args, training_args, model_args)
    check_world_size(training_args.world_size)
    # true / false / auto (default: the latest checkpoint in output_dir, if any) / a path; trl_sapo/checkpoints.py.
    # Resolved before any loading, so an impossible choice fails at once; rank 0 chooses for every rank. The lock
    # refuses a second run writing the same output_dir (trl_sapo/run_lock.py); it is a collective: every rank calls it.
    run_lock = acquire_run_lock(training_args)
    resume_from = resolve_resume_from_checkpoint(training_args)
    reward_funcs = load_reward_funcs(
        script_args.reward_funcs, training_args.max_completion_length, script_args.soft_punish_cache
    )

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    # Rank 0 downloads / generates (and caches) first; the other ranks then read the cache.
    with training_args.main_process_first(desc="GSM8K loading"):
        train_dataset = load_split(
            script_args, script_args.dataset_train_split, script_args.num_train_examples, training_args.seed
        )
        eval_dataset = None
        if training_args.eval_strategy != "no":
            eval_dataset = load_split(
                script_args, script_args.dataset_test_split, script_args.num_eval_examples, training_args.seed
            )

    trainer = SAPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=callbacks,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    check_backend(trainer.accelerator.distributed_type)
    objective = "SAPO" if training_args.use_sapo_loss else f"GRPO-clipped ({training_args.loss_type})"
    trainer.accelerator.print(
        f"Training {model_args.model_name_or_path} with {objective} on {len(train_dataset)} problems from "
        f"{script_args.dataset_name} ({trainer.accelerator.num_processes} process(es))."
    )

    train_result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.preempted:
        if run_lock is not None:
            run_lock.release()
        return trainer  # the checkpoint is saved; the grace period is for exiting, not for the final save
    # GRPOTrainer.log merges the metrics not yet logged (steps since the last logging step) into this summary, with
    # None for metrics without data (e.g. sapo/*_pos when no token had A > 0); Trainer.log_metrics cannot print None.
    metrics = {key: value for key, value in train_result.metrics.items() if value is not None}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    trainer.save_model(training_args.output_dir)  # gathers ZeRO-3 / FSDP shards; LoRA: the adapter only
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(
            model_name=os.path.basename(os.path.normpath(training_args.output_dir)),
            dataset_name=hub_dataset_name(script_args.dataset_name),
            tags=["gsm8k"],
        )
        if not model_args.use_peft:
            # Training turns the KV cache off (gradient checkpointing); the saved model should generate fast.
            trainer.model.config.use_cache = True
            trainer.model.config.save_pretrained(training_args.output_dir)
        if script_args.merge_adapter_on_save:
            merged_dir = merge_adapter(training_args.output_dir, model_args, training_args.trust_remote_code)
            trainer.accelerator.print(f"Merged model saved to {merged_dir}.")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")

    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=hub_dataset_name(script_args.dataset_name), tags=["gsm8k"])
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}.")
    if run_lock is not None:
        run_lock.release()
    trainer.end()
    return trainer


def main(argv: Sequence[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> None:
    """Command line entry point (`trl-sapo-gsm8k`, `python -m trl_sapo.gsm8k.train`, `scripts/gsm8k_sapo.py`):
    parse `argv` (default: `sys.argv[1:]`; `--config recipe.yaml` plus flags), train, and exit the process with
    `PREEMPTED_EXIT_CODE` when SIGTERM stopped the run after its checkpoint."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    trainer = train_gsm8k(*parse_args(None if argv is None else list(argv)), callbacks=callbacks)
    if trainer.preempted:
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
