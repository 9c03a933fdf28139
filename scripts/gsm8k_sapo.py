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
CPU (no GPU needed; a few minutes): python scripts/gsm8k_sapo.py --config recipes/smollm2-135m_cpu_demo.yaml

Precision: GRPOConfig turns bf16 on by default. On a machine without a bf16-capable accelerator this script defaults
to `bf16=False` (and to `use_cpu=True` when there is no accelerator at all, which multi-process CPU runs need) and
logs a warning; a `bf16`/`use_cpu` value given in the YAML or on the command line is always used as given.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field

import yaml
from transformers import TrainerCallback
from trl import ModelConfig, TrlParser

from trl_sapo import SAPOConfig

logger = logging.getLogger("gsm8k_sapo")

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
            "'#### <number>'), or dotted import paths 'my_pkg.my_module.my_reward' (TRL's reward signature). "
            "Weight them with `reward_weights`."
        },
    )
    merge_adapter_on_save: bool = field(
        default=False,
        metadata={
            "help": "With use_peft: after training, also merge the LoRA adapter into the base weights and save the "
            "full model (and tokenizer) to <output_dir>/merged."
        },
    )


def make_parser() -> TrlParser:
    """TrlParser over (GSM8KScriptArguments, SAPOConfig, ModelConfig) with this recipe's defaults."""
    parser = TrlParser(
        (GSM8KScriptArguments, SAPOConfig, ModelConfig),
        description="Train a causal LM on GSM8K with SAPO. Launch commands: see the docstring of scripts/gsm8k_sapo.py.",
    )
    parser.set_defaults(model_name_or_path=DEFAULT_MODEL, output_dir=DEFAULT_OUTPUT_DIR)
    parser.set_defaults(**_precision_fallback())
    return parser


def _precision_fallback() -> dict[str, bool]:
    """Parser defaults that replace GRPOConfig's `bf16=True` where that cannot run (no bf16-capable accelerator)."""
    import torch
    from transformers.utils import is_torch_bf16_gpu_available

    if is_torch_bf16_gpu_available():
        return {}
    fallback = {"bf16": False}
    if not torch.accelerator.is_available():
        fallback["use_cpu"] = True
    return fallback


def parse_args(args: list[str] | None = None) -> tuple[GSM8KScriptArguments, SAPOConfig, ModelConfig]:
    """Parse `--config recipe.yaml` and command-line flags (which win) into the three argument dataclasses."""
    args = list(sys.argv[1:] if args is None else args)
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(args)
    fallback = _precision_fallback()
    implicit = sorted(set(fallback) - _explicit_keys(args))
    if implicit:
        logger.warning(
            "No bf16-capable GPU found: using %s (GRPOConfig would default to bf16=True). Set them explicitly to "
            "silence this warning.",
            ", ".join(f"{key}={fallback[key]}" for key in implicit),
        )
    return script_args, training_args, model_args


def _explicit_keys(args: list[str]) -> set[str]:
    """Option names set on the command line or in the `--config` YAML."""
    keys = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
    if "--config" in args:
        with open(args[args.index("--config") + 1]) as f:
            keys |= set(yaml.safe_load(f) or {})
    return keys


def load_reward_funcs(names: list[str]) -> list:
    """Registry names (trl_sapo.gsm8k.rewards.REWARD_FUNCS) and dotted import paths, in order."""
    from trl_sapo.gsm8k.rewards import REWARD_FUNCS, get_reward_funcs

    funcs = []
    for name in names:
        if name in REWARD_FUNCS or "." not in name:
            funcs.extend(get_reward_funcs([name]))  # clear error listing the valid names for unknown ones
            continue
        module_name, attr = name.rsplit(".", 1)
        sys.path.insert(0, os.getcwd())
        try:
            funcs.append(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError) as err:
            raise ValueError(f"Could not import reward function {name!r}: {err}") from err
        finally:
            sys.path.pop(0)
    return funcs


def load_split(script_args: GSM8KScriptArguments, split: str, num_examples: int | None, seed: int):
    """One split as TRL conversational prompts (`prompt`) with the reference `answer` column for the rewards."""
    from trl_sapo.gsm8k.data import SYSTEM_PROMPT, load_gsm8k, to_prompts

    dataset = load_gsm8k(
        script_args.dataset_name,
        split=split,
        config_name=script_args.dataset_config,
        num_examples=num_examples,
        seed=seed,
        skip_invalid=script_args.skip_invalid_rows,
    )
    system_prompt = SYSTEM_PROMPT if script_args.system_prompt is None else script_args.system_prompt
    return to_prompts(dataset, system_prompt=system_prompt, num_few_shot=script_args.num_few_shot)


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


def check_world_size(world_size: int) -> None:
    """Fail when the launcher started several processes but each would train alone (e.g. `use_cpu=False` on a
    machine without GPUs: accelerate then runs every process as a separate single-process job)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world_size:
        raise RuntimeError(
            f"The launcher started {launched} processes, but each one would train alone (world size {world_size}). "
            "On a machine without GPUs pass `--use_cpu true` (and an accelerate config with `use_cpu: true`, e.g. "
            "accelerate_configs/cpu_2proc_ddp.yaml)."
        )


def check_backend(distributed_type) -> None:
    """Fail when `accelerate launch` asked for FSDP or DeepSpeed but the trainer would silently run another backend.

    accelerate (1.15) only enables FSDP on GPUs/accelerators: on CPU (`use_cpu`) it falls back to plain DDP
    (MULTI_CPU) without a word, which would mislead anyone rehearsing an FSDP run on CPU.
    """
    for env, backend in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if os.environ.get(env, "false").lower() == "true" and distributed_type.name != backend:
            raise RuntimeError(
                f"accelerate launch requested {backend}, but training would run with {distributed_type.name} "
                f"({env}=true is ignored by accelerate here{' (FSDP needs GPUs)' if backend == 'FSDP' else ''}). "
                "Use an accelerate config that this machine supports, e.g. accelerate_configs/cpu_2proc_ddp.yaml "
                "or cpu_2proc_zero2.yaml on CPU."
            )


def main(
    script_args: GSM8KScriptArguments,
    training_args: SAPOConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
):
    """Train, save (`output_dir`: model or LoRA adapter, tokenizer, trainer_state.json, model card), optionally
    merge the adapter and push to the Hub. Returns the trainer (its process group is already closed)."""
    from trl import get_peft_config, get_quantization_config

    from trl_sapo import SAPOTrainer

    check_args(script_args, training_args, model_args)
    check_world_size(training_args.world_size)
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

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    trainer.save_model(training_args.output_dir)  # gathers ZeRO-3 / FSDP shards; LoRA: the adapter only
    is_peft = model_args.use_peft
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(
            model_name=os.path.basename(os.path.normpath(training_args.output_dir)),
            dataset_name=hub_dataset_name(script_args.dataset_name),
            tags=["gsm8k"],
        )
        if not is_peft:
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
    trainer.end()
    return trainer


def hub_dataset_name(dataset_name: str) -> str | None:
    """The dataset id for the model card: Hub ids only (no local paths, no 'synthetic' generator)."""
    if dataset_name.startswith("synthetic") or os.path.exists(dataset_name):
        return None
    return dataset_name


def merge_adapter(adapter_dir: str, model_args: ModelConfig, trust_remote_code: bool = False) -> str:
    """Load base model + saved LoRA adapter, fold the adapter into the weights, save to `<adapter_dir>/merged`.

    Works from the saved files rather than the live (possibly sharded/quantized) training model, so it is the same
    for single-GPU, DDP, ZeRO-3 and FSDP runs.
    """
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    merged_dir = os.path.join(adapter_dir, "merged")
    model = AutoPeftModelForCausalLM.from_pretrained(
        adapter_dir,
        dtype=model_args.dtype,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
    )
    model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(merged_dir)
    return merged_dir


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    main(*parse_args())
