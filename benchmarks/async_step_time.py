"""Per-step wall time of AsyncSAPOTrainer (transformers rollout worker, CPU path) vs the sync SAPOTrainer on the same
model, data and batch, side by side in one process. Both on-policy (sync: one update per rollout; async: fixed lag 0
and free-running), so each step is one generation of the batch plus one forward/backward; the first step (warm-up)
is excluded. Times are medians over steps, from each trainer's `on_step_end` wall clock.

    python -m benchmarks.async_step_time --model tiny --steps 12      # the copy task's 2-layer Llama (seconds)
    python -m benchmarks.async_step_time --model smollm2 --steps 4    # SmolLM2-135M-Instruct (~2 min on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from trl_sapo.tools.offline import use_offline_mode

use_offline_mode()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

from trl_sapo import AsyncSAPOConfig, AsyncSAPOTrainer, SAPOConfig, SAPOTrainer  # noqa: E402


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def step_seconds(self) -> float:
        gaps = [b - a for a, b in zip(self.ends[1:], self.ends[2:])]  # from step 2 on
        return statistics.median(gaps)


def setup(name: str, folder: Path):
    """(model folder, prompts, reward, max_completion_length) for `tiny` (copy task) or `smollm2`."""
    if name == "tiny":
        from tools import copy_task

        copy_task.make_model(0).save_pretrained(folder)
        copy_task.make_tokenizer().save_pretrained(folder)
        return folder, copy_task.make_prompts()[0], copy_task.copy_reward, copy_task.ANSWER_LENGTH
    from tools.models import prepare_smollm2

    def length_reward(completions, **kwargs):
        return [len(c) / 100.0 for c in completions]

    prompts = Dataset.from_dict({"prompt": [f"What is {i} plus {2 * i}?" for i in range(64)]})
    return prepare_smollm2(), prompts, length_reward, 32


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch_size", type=int, default=None, help="completions per step (default 32 tiny, 8 smollm2)")
    p.add_argument("--num_generations", type=int, default=None, help="default 8 (tiny), 4 (smollm2)")
    args = p.parse_args(argv)
    batch = args.batch_size or (32 if args.model == "tiny" else 8)
    group = args.num_generations or (8 if args.model == "tiny" else 4)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, prompts, reward, length = setup(args.model, Path(tmp) / "model")
        common = {"per_device_train_batch_size": batch, "num_generations": group, "max_completion_length": length,
                  "max_steps": args.steps, "learning_rate": 1e-5, "use_cpu": True, "bf16": False, "seed": 0,
                  "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
                  "gradient_checkpointing": False}  # fmt: skip
        results = {}
        runs = {
            "sync SAPOTrainer": lambda: SAPOTrainer(
                AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), reward, train_dataset=prompts,
                processing_class=AutoTokenizer.from_pretrained(model_dir),
                args=SAPOConfig(f"{tmp}/sync", **common, steps_per_generation=1),
            ),
            "async, fixed lag 0": lambda: AsyncSAPOTrainer(
                str(model_dir), reward, train_dataset=prompts,
                args=AsyncSAPOConfig(f"{tmp}/lag0", **common, fixed_lag=0, max_staleness=0, token_budget=-1),
            ),
            "async, free-running": lambda: AsyncSAPOTrainer(
                str(model_dir), reward, train_dataset=prompts,
                args=AsyncSAPOConfig(f"{tmp}/free", **common, max_staleness=4, token_budget=-1),
            ),
        }  # fmt: skip
        for label, build in runs.items():
            trainer = build()
            clock = StepClock()
            trainer.add_callback(clock)
            trainer.train()
            results[label] = clock.step_seconds()
    print(f"\nmodel {args.model}, {batch} completions per step ({group} per prompt), {length} new tokens, "
          f"{args.steps} steps, torch threads {torch.get_num_threads()}; median s/step from step 2:")  # fmt: skip
    for label, seconds in results.items():
        print(f"  {label:22s} {seconds:.3f} s/step")
    return results


if __name__ == "__main__":
    main()
