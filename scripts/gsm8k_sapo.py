# Copyright 2026 The trl-sapo developers. Licensed under the Apache License, Version 2.0.
"""Train a causal LM on GSM8K with SAPO (Soft Adaptive Policy Optimization) — the `trl grpo` recipe, SAPO loss.

Every `SAPOConfig` / `GRPOConfig` / `TrainingArguments` option, every `trl.ModelConfig` option (LoRA, dtype,
attention, quantization) and the GSM8K options below are flags; `--config recipe.yaml` sets them from YAML, and
flags given on the command line override the YAML. `python scripts/gsm8k_sapo.py --help` lists them all.

This file is a thin shim over the installed entry point `trl_sapo.gsm8k.train.main`: with `pip install trl-sapo`
the same program is `trl-sapo-gsm8k --config recipe.yaml` or `accelerate launch -m trl_sapo.gsm8k.train ...`. It is
the GSM8K recipe of `trl-sapo grpo` (any `trl grpo` command or recipe with SAPO; README "Coming from `trl grpo`").

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

Asynchronous (AsyncSAPOTrainer: `async_rollouts: true` in the recipe or `--async_rollouts true`; not yet run on a GPU):
    CUDA_VISIBLE_DEVICES=0 trl vllm-serve --model Qwen/Qwen2.5-0.5B-Instruct --port 8000 &
    CUDA_VISIBLE_DEVICES=1 python scripts/gsm8k_sapo.py --config recipes/qwen2.5-0.5b-instruct_sapo_async.yaml
    python scripts/gsm8k_sapo.py --config recipes/smollm2-135m_cpu_async.yaml        # CPU, no vLLM

Multi-node (2 machines x 8 GPUs; run on each machine with its rank; under SLURM use slurm/):
    accelerate launch --config_file accelerate_configs/multi_node.yaml --num_machines 2 --num_processes 16 \
        --machine_rank $NODE_RANK --main_process_ip $HEAD_NODE_IP --main_process_port 29500 \
        scripts/gsm8k_sapo.py --config recipes/qwen2.5-1.5b-instruct_sapo.yaml

GRPO baseline (same recipe, clipped objective): --config recipes/qwen2.5-0.5b-instruct_grpo.yaml

Resume: run the same command again; it continues from the latest checkpoint in output_dir (and says so).
`--resume_from_checkpoint true|false|auto|PATH` chooses explicitly (trl_sapo/checkpoints.py).
CPU (no GPU needed; a few minutes): python scripts/gsm8k_sapo.py --config recipes/smollm2-135m_cpu_demo.yaml

Precision defaults, pre-emption exit and the code itself: trl_sapo/gsm8k/train.py.
"""

from trl_sapo.gsm8k.train import main

if __name__ == "__main__":
    main()
