"""`make demo`: SAPO on SmolLM2-135M-Instruct on CPU, evaluated before and after on held-out problems (~10 min).

Offline, no GPU. Trains with `recipes/smollm2-135m_cpu_demo.yaml` through `scripts/gsm8k_sapo.py`'s `main()`
(Trainer's progress bar), then prints accuracy / format rate before and after, the training rewards and SAPO's
gate diagnostics (`sapo/*`) in a short table.

Data choice: the recipe's offline synthetic problems (1-2 operations, small numbers), not GSM8K itself. A 135M
model solves very few GSM8K problems and its solutions are longer than the 64 tokens a CPU step can afford, so
nearly every group of completions would score 0 and give zero advantages; on the easy synthetic problems it is
right often enough for the rewards and SAPO's gate statistics to move within a few steps. Pass
`--dataset_name ../shared/data/gsm8k` to run on GSM8K anyway (same pipeline, flatter curves).

    python scripts/demo.py                       # defaults: 8 optimizer steps, 16 held-out problems
    python scripts/demo.py --max_steps 30 --num_eval_examples 100
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "recipes" / "smollm2-135m_cpu_demo.yaml"
SAPO_METRICS = ["sapo/gate_mean", "sapo/grad_weight_mean", "sapo/soft_clip_ratio", "sapo/ratio_mean", "sapo/ratio_max"]
REWARD_METRICS = ["reward", "rewards/accuracy_reward/mean", "rewards/format_reward/mean", "frac_reward_zero_std"]


def pick_num_threads() -> int:
    """Torch threads: the idle cores (>= 1). On a busy machine several spinning OpenMP threads per process are
    many times slower than one (measured: 8x for generation on 2 loaded cores). OMP_NUM_THREADS wins if set."""
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    cpus = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, round(cpus - busy)))


def evaluate_model(model_path: str, dataset, max_new_tokens: int, num_few_shot: int) -> dict:
    from trl_sapo.gsm8k.evaluation import evaluate, load_model_for_eval

    model, tokenizer = load_model_for_eval(model_path, dtype="float32", device="cpu")
    return evaluate(model, tokenizer, dataset, batch_size=8, max_new_tokens=max_new_tokens, num_few_shot=num_few_shot)


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_steps", type=int, default=8, help="optimizer steps (~30-100 s each on 1 busy CPU core)")
    parser.add_argument("--num_eval_examples", type=int, default=16, help="held-out problems, before and after")
    parser.add_argument("--dataset_name", default=None, help="default: the recipe's (easy synthetic problems)")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "outputs" / "demo"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(pick_num_threads())
    started = time.time()

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import gsm8k_sapo

    from trl_sapo.tools.models import prepare_smollm2

    model_dir = prepare_smollm2()
    overrides = ["--model_name_or_path", str(model_dir), "--output_dir", args.output_dir]
    overrides += ["--max_steps", str(args.max_steps)]
    if args.dataset_name:
        overrides += ["--dataset_name", args.dataset_name]
    script_args, training_args, model_args = gsm8k_sapo.parse_args(["--config", str(RECIPE), *overrides])

    # Held-out problems: the test split (different generator seed / different problems than training).
    from trl_sapo.gsm8k.data import load_gsm8k

    eval_dataset = load_gsm8k(
        script_args.dataset_name, split=script_args.dataset_test_split, num_examples=args.num_eval_examples, seed=1
    )
    print(
        f"\n== SAPO demo: {model_dir.name} on {script_args.dataset_name}, {args.max_steps} steps, "
        f"{torch.get_num_threads()} CPU thread(s) ==\n\n-- evaluating before training ({len(eval_dataset)} problems)",
        flush=True,
    )
    eval_kwargs = dict(max_new_tokens=training_args.max_completion_length, num_few_shot=script_args.num_few_shot)
    before = evaluate_model(str(model_dir), eval_dataset, **eval_kwargs)

    print("\n-- training with SAPO", flush=True)
    train_start = time.time()
    trainer = gsm8k_sapo.main(script_args, training_args, model_args)
    train_time = time.time() - train_start

    print(f"\n-- evaluating after training ({len(eval_dataset)} problems)", flush=True)
    after = evaluate_model(training_args.output_dir, eval_dataset, **eval_kwargs)

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    half = max(1, len(logs) // 2)
    first, last = logs[:half], logs[half:] or logs[-1:]

    rows = [
        ("held-out accuracy", before["accuracy"], after["accuracy"]),
        ("held-out format rate ('#### N' line)", before["format_rate"], after["format_rate"]),
        ("held-out mean completion tokens", before["mean_completion_tokens"], after["mean_completion_tokens"]),
    ]
    print(f"\n{'':42s}{'before':>10s}{'after':>10s}")
    for name, b, a in rows:
        print(f"{name:42s}{b:10.3f}{a:10.3f}")
    print(f"\n{'training metric (mean over steps)':42s}{'1st half':>10s}{'2nd half':>10s}")
    for key in REWARD_METRICS + ["loss"] + SAPO_METRICS:
        print(f"{key:42s}{mean([e.get(key) for e in first]):10.3f}{mean([e.get(key) for e in last]):10.3f}")
    print(
        f"\nsteps: {trainer.state.global_step}, training {train_time / 60:.1f} min, total "
        f"{(time.time() - started) / 60:.1f} min; model saved to {training_args.output_dir}\n"
        "sapo/gate_mean: mean f(r) (2/tau on-policy); sapo/grad_weight_mean: mean gradient weight w(r) (1 on-policy);"
        "\nsapo/soft_clip_ratio: share of tokens with gradient weight < 0.5; ratios != 1 come from the "
        "off-policy\nsecond optimizer step of each generation round (steps_per_generation > "
        "gradient_accumulation_steps)."
    )


if __name__ == "__main__":
    main()
