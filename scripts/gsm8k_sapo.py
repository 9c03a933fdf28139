# Copyright 2026 The trl-sapo developers. Licensed under the Apache License, Version 2.0.
"""Train a causal LM on GSM8K with SAPO (Soft Adaptive Policy Optimization) — the `trl grpo` recipe, SAPO loss.

Every `SAPOConfig` / `GRPOConfig` / `TrainingArguments` option, every `trl.ModelConfig` option (LoRA, dtype,
attention, quantization) and the GSM8K options below are flags; `--config recipe.yaml` sets them from YAML, and
flags given on the command line override the YAML. `python scripts/gsm8k_sapo.py --help` lists them all.

Single GPU:
    accelerate launch --config_file accelerate_configs/single_gpu.yaml \
        scripts/gsm8k_sapo.py --config recipes/qwen2.5-0.5b-instruct_sapo.yaml

Multi-GPU (DDP, 8 GPUs; vLLM colocated with training on every GPU, as in the recipe):
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml \
        scripts/gsm8k_sapo.py --config recipes/qwen2.5-1.5b-instruct_sapo.yaml

DeepSpeed ZeRO-2 / ZeRO-3:
    accelerate launch --config_file accelerate_configs/zero3.yaml \
        scripts/gsm8k_sapo.py --config recipes/qwen2.5-1.5b-instruct_sapo.yaml

FSDP2:
    accelerate launch --config_file accelerate_configs/fsdp2.yaml \
        scripts/gsm8k_sapo.py --config recipes/qwen2.5-1.5b-instruct_sapo.yaml

LoRA (the adapter is saved to output_dir; `--merge_adapter_on_save true` also writes `<output_dir>/merged`):
    accelerate launch --config_file accelerate_configs/single_gpu.yaml \
        scripts/gsm8k_sapo.py --config recipes/qwen2.5-0.5b-instruct_sapo_lora.yaml

vLLM server mode (generation on a dedicated GPU, training on the other 7):
    CUDA_VISIBLE_DEVICES=7 trl vllm-serve --model Qwen/Qwen2.5-1.5B-Instruct &
    CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6 accelerate launch --config_file accelerate_configs/multi_gpu.yaml \
        --num_processes 7 scripts/gsm8k_sapo.py --config recipes/qwen2.5-1.5b-instruct_sapo.yaml --vllm_mode server

Multi-node (2 machines x 8 GPUs; run on each machine with its rank; under SLURM use slurm/):
    accelerate launch --config_file accelerate_configs/multi_node.yaml --num_machines 2 --num_processes 16 \
        --machine_rank $NODE_RANK --main_process_ip $HEAD_NODE_IP --main_process_port 29500 \
        scripts/gsm8k_sapo.py --config recipes/qwen2.5-1.5b-instruct_sapo.yaml

GRPO baseline (same recipe, clipped objective): --config recipes/qwen2.5-0.5b-instruct_grpo.yaml

Resume: run the same command again; it continues from the latest checkpoint in output_dir (and says so).
`--resume_from_checkpoint true|false|auto|PATH` chooses explicitly (trl_sapo/checkpoints.py).
CPU (no GPU needed; a few minutes): python scripts/gsm8k_sapo.py --config recipes/smollm2-135m_cpu_demo.yaml

Precision: GRPOConfig turns bf16 on by default. On a machine without a bf16-capable accelerator this script defaults
to `bf16=False` (and to `use_cpu=True` when there is no accelerator at all, which multi-process CPU runs need) and
logs a warning; a `bf16`/`use_cpu` value given in the YAML or on the command line is always used as given.

The options, argument checks and data/reward loading are in `trl_sapo.gsm8k.recipe`; precision defaults, launcher
checks and adapter merging in `trl_sapo.launch`.
"""

from __future__ import annotations

import logging
import os

from transformers import TrainerCallback
from trl import ModelConfig, get_peft_config, get_quantization_config

from trl_sapo import SAPOConfig, SAPOTrainer
from trl_sapo.checkpoints import resolve_resume_from_checkpoint
from trl_sapo.gsm8k.recipe import (
    GSM8KScriptArguments,
    check_args,
    hub_dataset_name,
    load_reward_funcs,
    load_split,
    parse_args,
)
from trl_sapo.launch import check_backend, check_world_size, merge_adapter
from trl_sapo.run_lock import acquire_run_lock


def main(
    script_args: GSM8KScriptArguments,
    training_args: SAPOConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
):
    """Train, save (`output_dir`: model or LoRA adapter, tokenizer, trainer_state.json, model card), optionally
    merge the adapter and push to the Hub. Returns the trainer (its process group is already closed)."""
    check_args(script_args, training_args, model_args)
    check_world_size(training_args.world_size)
    # true / false / auto (default: the latest checkpoint in output_dir, if any) / a path; trl_sapo/checkpoints.py.
    # Resolved before any loading, so an impossible choice fails at once.
    run_lock = acquire_run_lock(training_args)  # trl_sapo/run_lock.py: no second run on output_dir (issue 19)
    resume_from = resolve_resume_from_checkpoint(training_args)
    reward_funcs = load_reward_funcs(script_args.reward_funcs)

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
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
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


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    main(*parse_args())
