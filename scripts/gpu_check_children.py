"""The in-process checks of scripts/gpu_check.py, each run in a fresh process (`--child NAME`): they train in this
Python process, so a CUDA error or leaked memory ends with the process. Each writes `<work_dir>/<name>.json`."""

from __future__ import annotations

import json
import time
from pathlib import Path


def _prompts(num: int):
    """`num` synthetic GSM8K-style problems as chat prompts, with their `answer` column."""
    from trl_sapo.gsm8k.data import to_prompts
    from trl_sapo.gsm8k.synthetic import generate_problems

    return to_prompts(generate_problems(num, seed=0))


def _length_reward(completions, **kwargs) -> list[float]:
    """A cheap reward (throughput, not learning): shorter completions score higher."""
    return [-len(str(c)) / 1000.0 for c in completions]


def _common_config(output_dir: Path, steps: int, device: str = "cuda") -> dict:
    return dict(
        output_dir=str(output_dir), bf16=device == "cuda", use_cpu=device == "cpu", max_steps=steps, per_device_train_batch_size=8, num_generations=8,
        steps_per_generation=2, max_completion_length=128, logging_steps=1, report_to="none", save_strategy="no",
        seed=0, gradient_checkpointing=True, learning_rate=1e-6, beta=0.0,
    )  # fmt: skip


class _Timer:
    """Trainer callback: wall time and cumulative token count from the first logged step to the last."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def __init__(self):
                self.marks: list[tuple[float, float]] = []  # (time, num_tokens) per logged step

            def on_log(self, args, state, control, logs=None, **kwargs):
                import torch

                if logs and "num_tokens" in logs:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    self.marks.append((time.perf_counter(), logs["num_tokens"]))

        return Timer()


def throughput(model_dir: Path, work_dir: Path, steps: int, device: str = "cuda") -> dict:
    """SAPOTrainer and GRPOTrainer(loss_type="sapo") one after the other on the same prompts, seed and settings:
    tokens/s after the first step (warm-up) and peak allocated GPU memory of each; the ratio is the result."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from trl_sapo import SAPOConfig, SAPOTrainer

    dataset = _prompts(64)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    result = {}
    arms = {"sapo": (SAPOTrainer, SAPOConfig, {}), "trl_sapo": (GRPOTrainer, GRPOConfig, {"loss_type": "sapo"})}
    for arm, (trainer_cls, config_cls, extra) in arms.items():
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        config = config_cls(**_common_config(work_dir / f"throughput-{arm}", max(steps, 1) + 3, device), **extra)
        timer = _Timer()
        trainer = trainer_cls(model=model, reward_funcs=_length_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer])  # fmt: skip
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        if len(timer.marks) < 2:
            raise AssertionError(f"{arm}: num_tokens was logged {len(timer.marks)} time(s); need 2 to time steps")
        (t0, n0), (t1, n1) = timer.marks[0], timer.marks[-1]
        result[f"{arm}_tokens_per_s"] = (n1 - n0) / (t1 - t0)
        if device == "cuda":
            result[f"{arm}_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del trainer, model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    result["tokens_per_s_ratio_sapo_over_trl"] = result["sapo_tokens_per_s"] / result["trl_sapo_tokens_per_s"]
    if device == "cuda":
        result["peak_mem_ratio_sapo_over_trl"] = result["sapo_peak_mem_gib"] / result["trl_sapo_peak_mem_gib"]
    return result


ASYNC_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "qwen2.5-0.5b-instruct_sapo_async.yaml"


def async_trainer(model_dir: Path, work_dir: Path, steps: int, device: str = "cuda") -> dict:
    """AsyncSAPOTrainer as users start it: the GSM8K entry point with the async GPU recipe (`async_rollouts: true`)
    on synthetic problems for a few steps, with the transformers rollout worker (vLLM is not carried to the GPU
    machine) in place of the recipe's `rollout_backend: vllm`."""
    import math

    from trl_sapo.gsm8k.recipe import parse_args
    from trl_sapo.gsm8k.train import train_gsm8k

    argv = ["--config", str(ASYNC_RECIPE), "--model_name_or_path", str(model_dir), "--output_dir",
            str(work_dir / "async"), "--dataset_name", "synthetic", "--num_train_examples", "32", "--reward_funcs",
            "scripts.gpu_check_children._length_reward", "--rollout_backend", "transformers", "--max_steps",
            str(steps + 1), "--max_completion_length", "64", "--per_device_train_batch_size", "8",
            "--gradient_accumulation_steps", "1", "--learning_rate", "1e-6", "--warmup_steps", "0",
            "--logging_steps", "1", "--save_strategy", "no"]  # fmt: skip
    if device == "cpu":
        argv += ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32"]
    trainer = train_gsm8k(*parse_args(argv))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"losses: {losses}")
    return {"final_loss": losses[-1], "global_step": trainer.state.global_step}


CHILD_CHECKS = {"throughput": throughput, "async": async_trainer}


def run_child_check(args) -> int:
    """`--child NAME`: run it and write its details to `<work_dir>/<name>.json` (an exception exits non-zero)."""
    details = CHILD_CHECKS[args.child](Path(args.model), Path(args.work_dir), args.steps)
    (Path(args.work_dir) / f"{args.child}.json").write_text(json.dumps(details, indent=1))
    return 0
