"""Tiny, deterministic CPU training runs shared by the reliability tests (resume, pre-emption, watchdog, rewards).

Also a command-line runner, so the same run can be launched in a subprocess (`python tests/_reliability_helpers.py
...` or `accelerate launch tests/_reliability_helpers.py ...`) for signal and multi-process tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from helpers import REPO_ROOT, free_port, length_reward

HELPER = Path(__file__).resolve()

PROMPTS = [f"Count to {n}:" for n in range(1, 33)]
# Checkpoint-3 of this run is inside a rollout: a generation serves 4 micro-steps x 2 iterations = 8 micro-steps
# = 4 optimizer steps (GA 2). Used by the exact-resume tests.
MID_ROLLOUT = dict(
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    steps_per_generation=4,
    num_iterations=2,
    max_steps=4,
    save_strategy="steps",
    save_steps=3,
)


def tiny_dataset(n: int = 16):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": PROMPTS[:n]})


def tiny_config(output_dir, config_cls=None, **overrides):
    """SAPOConfig (or `config_cls`) for a few fast, deterministic CPU steps (float32, sampling with fixed seeds)."""
    from helpers import CPU_TRAINING_KWARGS

    from trl_sapo import SAPOConfig

    kwargs = dict(
        output_dir=str(output_dir),
        **CPU_TRAINING_KWARGS,
        max_completion_length=8,
        learning_rate=1e-2,
        max_steps=4,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return (config_cls or SAPOConfig)(**kwargs)


def tiny_trainer(
    model_path,
    output_dir,
    *,
    reward_funcs=None,
    peft=False,
    trainer_cls=None,
    config_cls=None,
    eval_dataset=None,
    **overrides,
):
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from trl_sapo import SAPOTrainer

    args = tiny_config(output_dir, config_cls, **overrides)
    set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return (trainer_cls or SAPOTrainer)(
        model=model,
        reward_funcs=reward_funcs or [length_reward],
        args=args,
        train_dataset=tiny_dataset(),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def trainable_state(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def subprocess_env() -> dict[str, str]:
    from trl_sapo.tools.offline import OFFLINE_ENV

    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def accelerate_config(tmp_path, num_processes: int = 2, distributed_type: str = "MULTI_GPU", use_cpu=True) -> Path:
    """Minimal accelerate config starting `num_processes` processes (on CPU: MULTI_CPU would start only one).

    On CPU accelerate 1.15 turns MULTI_GPU, FSDP and DEEPSPEED alike into MULTI_CPU (DDP over gloo).
    """
    path = Path(tmp_path) / f"accelerate_{distributed_type.lower()}.yaml"
    extra = ""
    if distributed_type == "DEEPSPEED":  # runs on DeepSpeed's CPU accelerator (gloo) with use_cpu
        extra = textwrap.dedent(
            """\
            deepspeed_config:
              zero_stage: 2
              offload_optimizer_device: none
              offload_param_device: none
              zero3_init_flag: false
              deepspeed_multinode_launcher: standard
            """
        )
    if distributed_type == "FSDP":
        extra = textwrap.dedent(
            """\
            fsdp_config:
              fsdp_version: 2
              fsdp_auto_wrap_policy: NO_WRAP
              fsdp_state_dict_type: FULL_STATE_DICT
              fsdp_reshard_after_forward: true
              fsdp_cpu_ram_efficient_loading: false
            """
        )
    path.write_text(
        textwrap.dedent(
            f"""\
            compute_environment: LOCAL_MACHINE
            distributed_type: {distributed_type}
            use_cpu: {str(use_cpu).lower()}
            num_machines: 1
            machine_rank: 0
            num_processes: {num_processes}
            mixed_precision: 'no'
            main_training_function: main
            rdzv_backend: static
            same_network: true
            """
        )
        + extra
    )
    return path


def launch(
    args: list[str],
    *,
    tmp_path,
    num_processes: int = 1,
    distributed_type: str = "MULTI_GPU",
    use_cpu=True,
    timeout=150,
):
    """Run this file's CLI in a subprocess (accelerate-launched when num_processes > 1); returns CompletedProcess."""
    if num_processes > 1:
        config = accelerate_config(tmp_path, num_processes, distributed_type, use_cpu)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += ["--main_process_port", str(free_port()), str(HELPER), *args]
    else:
        cmd = [sys.executable, str(HELPER), *args]
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


# ---- CLI: one training run in this process -----------------------------------------------------------------------


def _failing_reward(fail_rank: int, fail_step: int):
    def flaky_reward(completions, trainer_state=None, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        if rank == fail_rank and trainer_state.global_step >= fail_step:
            raise ZeroDivisionError("boom from the test reward")
        return [float(len(c)) for c in completions]

    return flaky_reward


def inject_nonfinite(trainer_cls, steps: dict[int, str], rank: int | None = None):
    """Subclass of `trainer_cls` that makes optimizer step s (1-based) non-finite in the way `steps[s]` says.

    "loss": the loss *value* is NaN but its gradient is finite (only the loss check can see it);
    "grad": the loss is finite but one gradient is inf (only the gradient-norm check can see it);
    "both": loss × NaN (NaN loss and NaN gradients). `rank`: only on that process (default: all).
    """

    class Injected(trainer_cls):
        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            kind = steps.get(self.state.global_step + 1)
            if kind is None or rank not in (None, self.accelerator.process_index):
                return loss
            if kind == "loss":
                return loss + loss.detach() * float("nan")
            if kind == "both":
                return loss * float("nan")
            return loss + _inf_grad(next(p for p in model.parameters() if p.requires_grad))

    return Injected


def _inf_grad(param: torch.Tensor) -> torch.Tensor:
    """A zero-valued term whose gradient w.r.t. `param` is inf."""

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return torch.full((1,), float("inf"), device=grad.device, dtype=grad.dtype)

    return InfGrad.apply(param.flatten()[:1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--config", default="{}", help="JSON dict of SAPOConfig overrides")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--fail_rank", type=int, default=None, help="reward raises on this rank")
    parser.add_argument("--fail_step", type=int, default=0)
    parser.add_argument("--nan_step", type=int, default=None, help="non-finite loss/grad at this optimizer step")
    parser.add_argument("--nan_kind", default="loss", choices=["loss", "grad", "both"])
    parser.add_argument("--nan_rank", type=int, default=None)
    parser.add_argument("--step_sleep", type=float, default=0.0, help="seconds to sleep after each optimizer step")
    parser.add_argument("--ready_file", default=None, help="READY_FILE.RANK gets the pid after optimizer step 1")
    parser.add_argument("--result", default=None, help="JSON summary, one file per rank: RESULT.RANK")
    a = parser.parse_args(argv)

    import time

    from transformers import TrainerCallback

    from trl_sapo import SAPOTrainer

    trainer_cls = SAPOTrainer
    if a.nan_step is not None:
        trainer_cls = inject_nonfinite(SAPOTrainer, {a.nan_step: a.nan_kind}, rank=a.nan_rank)

    class Pace(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if a.ready_file and state.global_step == 1:  # READY_FILE.RANK holds the process id
                Path(f"{a.ready_file}.{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
            time.sleep(a.step_sleep)

    rewards = [_failing_reward(a.fail_rank, a.fail_step)] if a.fail_rank is not None else None
    trainer = tiny_trainer(
        a.model, a.output_dir, reward_funcs=rewards, trainer_cls=trainer_cls, **json.loads(a.config)
    )
    trainer.add_callback(Pace())
    try:
        trainer.train(resume_from_checkpoint=a.resume)
        if trainer.preempted:
            print("preempted: exiting without the post-training work", flush=True)
    finally:
        if a.result:
            weights = trainable_state(trainer)
            result = {
                "world_size": trainer.accelerator.num_processes,
                "distributed_type": trainer.accelerator.distributed_type.value,
                "global_step": trainer.state.global_step,
                "losses": train_losses(trainer),
                "log_history": trainer.state.log_history,
                "weight_sum": sum(v.double().sum().item() for v in weights.values()),
                "weights_finite": all(bool(torch.isfinite(v).all()) for v in weights.values()),
            }
            Path(f"{a.result}.{trainer.accelerator.process_index}").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
