"""Launch-time helpers for training scripts: precision defaults, launcher sanity checks, LoRA adapter merging.

Generic (any GRPO/SAPO script built on `trl.TrlParser`); `scripts/gsm8k_sapo.py` uses them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import yaml

logger = logging.getLogger(__name__)


def check_model_revision(model_name_or_path: str, revision: str | None) -> None:
    """Refuse a Hub revision for a local model folder: transformers ignores `revision` for a path, so the run would
    load whatever the folder holds while its config says otherwise. `main` (TRL's default) passes."""
    if revision not in (None, "main") and os.path.isdir(model_name_or_path):
        raise ValueError(
            f"model_revision {revision!r} picks a version of a Hub model, but {model_name_or_path!r} is a local "
            "folder, which transformers loads as it is (the revision would be ignored): drop model_revision, or give "
            "the Hub id."
        )


def precision_defaults() -> dict[str, bool]:
    """Parser defaults that replace GRPOConfig's `bf16=True` where that cannot run (no bf16-capable accelerator):
    `bf16=False`, and `use_cpu=True` when there is no accelerator at all (multi-process CPU runs need it)."""
    import torch
    from transformers.utils import is_torch_bf16_gpu_available

    if is_torch_bf16_gpu_available():
        return {}
    fallback = {"bf16": False}
    if not torch.accelerator.is_available():
        fallback["use_cpu"] = True
    return fallback


def explicit_keys(args: Sequence[str]) -> set[str]:
    """Option names set on the command line or in the `--config` YAML."""
    keys = {arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")}
    if "--config" in args:
        with open(args[list(args).index("--config") + 1]) as f:
            keys |= set(yaml.safe_load(f) or {})
    return keys


def parse_with_precision_defaults(parser, args: Sequence[str], **parse_kwargs):
    """`parser.parse_args_and_config(args, **parse_kwargs)` with `precision_defaults()` as parser defaults; logs a
    warning naming the defaults that were applied because neither the YAML nor the command line set them."""
    fallback = precision_defaults()
    parser.set_defaults(**fallback)
    parsed = parser.parse_args_and_config(list(args), **parse_kwargs)
    implicit = sorted(set(fallback) - explicit_keys(args))
    if implicit:
        logger.warning(
            "No bf16-capable GPU found: using %s (GRPOConfig would default to bf16=True). Set them explicitly to "
            "silence this warning.",
            ", ".join(f"{key}={fallback[key]}" for key in implicit),
        )
    return parsed


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


def merge_adapter(adapter_dir: str, model_args, trust_remote_code: bool = False) -> str:
    """Load base model + saved LoRA adapter, fold the adapter into the weights, save to `<adapter_dir>/merged`.

    Works from the saved files rather than the live (possibly sharded/quantized) training model, so it is the same
    for single-GPU, DDP, ZeRO-3 and FSDP runs. `model_args`: the run's `trl.ModelConfig`; the base is the model it
    trained (`model_name_or_path` at `model_revision`, in `dtype`). peft's AutoPeftModel would load the base at the
    revision in `adapter_config.json`, which TRL leaves empty: the `main` branch, whatever `model_revision` said.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = os.path.join(adapter_dir, "merged")
    base = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        trust_remote_code=trust_remote_code,
    )
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(merged_dir)
    return merged_dir
