"""`make demo`: SAPO makes SmolLM2-135M-Instruct better at word problems, on 2 CPU cores, offline, in ~15 minutes.

1. Evaluates the model (greedy, pass@1) on held-out problems: half are new problems of the kind it trains on, half
   are other story kinds in sentence templates it never trains on (`phrasing=alternate`).
2. Trains with SAPO by running the project's script exactly as a user would:
   `python scripts/gsm8k_sapo.py --config recipes/smollm2-135m_cpu_demo.yaml --model_name_or_path ... --output_dir ...`
3. Evaluates the trained model on the same problems and prints a short report: accuracy before/after with 95 %
   intervals (Wilson per accuracy; for the gain, a paired interval over the same problems), per operation
   (+ - * /), completion length, the training reward and SAPO's gate diagnostics, and where this run's gain falls
   among the recipe's measured seeds (docs/results/demo_seeds.json). Everything is also written to
   `<output_dir>/summary.json`.

    python -m scripts.demo            # what `make demo` runs; --seed / --max_steps / --num_eval_examples / --output_dir
    make demo DEMO_ARGS="--seed 3"    # the same, another training seed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from trl_sapo.tools.offline import use_offline_mode

use_offline_mode()

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "recipes" / "smollm2-135m_cpu_demo.yaml"
SEED_STUDY = REPO_ROOT / "docs" / "results" / "demo_seeds.json"  # written by benchmarks/demo_seeds.py
SAPO_METRICS = ("sapo/gate_mean", "sapo/grad_weight_mean", "sapo/soft_clip_ratio", "sapo/ratio_max")


def cpu_times(stat_path: str = "/proc/stat") -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs together from the `cpu` line of /proc/stat; None where there is none."""
    try:
        with open(stat_path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is inside user)
    return ticks[3] + ticks[4], sum(ticks)


def idle_cores(window_s: float = 1.0, read=cpu_times, sleep=time.sleep) -> float | None:
    """Cores idle right now: the machine's idle share of CPU time over `window_s` seconds times its CPU count.
    Unlike the load average (a 1-minute decaying mean), this does not still count a test suite that just ended."""
    before = read()
    sleep(window_s)
    after = read()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def pick_num_threads(environ=os.environ, measure=idle_cores) -> tuple[int, str]:
    """Torch threads and why: OMP_NUM_THREADS if set; otherwise the cores idle now (>= 1) of those this process may
    use, or all of them where idle time cannot be read. On a busy machine several spinning OpenMP threads per process
    are many times slower than one (measured: 8x for generation on 2 loaded cores)."""
    if "OMP_NUM_THREADS" in environ:
        value = environ["OMP_NUM_THREADS"]
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"OMP_NUM_THREADS={value!r}: expected a whole number of threads >= 1")
        return int(value), "OMP_NUM_THREADS"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = measure()
    if idle is None:
        return usable, "all cores (idle time not readable)"
    return max(1, min(usable, round(idle))), f"{idle:.1f} of {os.cpu_count()} cores idle over 1 s"


def evaluate_model(model_path: str, heldout: dict, recipe: dict, label: str) -> dict:
    """Greedy pass@1 per subset, prompted and length-limited as the recipe trains (system prompt, few-shot turns,
    max_completion_length): {subset: {"correct": [bool], "operations": [str], "format_rate",
    "mean_completion_tokens"}}."""

    from trl_sapo.gsm8k.evaluation import evaluate, load_model_for_eval
    from trl_sapo.gsm8k.recipe import resolve_system_prompt
    from trl_sapo.gsm8k.synthetic import operations

    model, tokenizer = load_model_for_eval(model_path, dtype="float32", device="cpu")
    prompt_format = {
        "system_prompt": resolve_system_prompt(recipe.get("system_prompt")),
        "num_few_shot": recipe.get("num_few_shot", 0),
    }
    out = {}
    for name, dataset in heldout.items():
        print(f"-- evaluating {label} on {len(dataset)} held-out problems ({name})", flush=True)
        result = evaluate(
            model, tokenizer, dataset, batch_size=32, max_new_tokens=recipe["max_completion_length"], **prompt_format
        )
        out[name] = {
            "correct": [p["correct"][0] for p in result["predictions"]],
            "operations": [operations(answer) for answer in dataset["answer"]],
            "format_rate": result["format_rate"],
            "mean_completion_tokens": result["mean_completion_tokens"],
        }
    return out


def accuracy_block(correct: list[bool]) -> dict:
    from tools.stats import wilson_interval

    low, high = wilson_interval(sum(correct), len(correct))
    return {"accuracy": sum(correct) / len(correct), "ci95": [low, high], "n": len(correct)}


def train(args, model_dir: Path, num_threads: int) -> float:
    """Run scripts/gsm8k_sapo.py with the demo recipe in a subprocess (the user's command); returns its wall time."""
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "gsm8k_sapo.py"), "--config", str(args.recipe),
        "--model_name_or_path", str(model_dir), "--output_dir", args.output_dir,
    ]  # fmt: skip
    for flag in ("seed", "max_steps"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    print("-- training with SAPO:\n   " + " ".join(command), flush=True)
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(num_threads)}
    # The progress bar (stderr) passes through; the per-step metric dicts Trainer prints to stdout are summarised
    # in the report instead (they are all in <output_dir>/trainer_state.json).
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if not line.startswith("{'"):
                print(line, end="", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed (exit status {proc.returncode}): {' '.join(command)}")
    return time.time() - start


def training_summary(output_dir: str) -> dict:
    """Training reward (first vs last quarter of the steps) and SAPO's gate metrics from trainer_state.json."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    rows = [e for e in state["log_history"] if "loss" in e and "train_runtime" not in e]
    rewards = [e["reward"] for e in rows if "reward" in e]
    quarter = max(1, len(rewards) // 4)
    gate = {k: statistics.fmean([e[k] for e in rows if k in e]) for k in SAPO_METRICS if any(k in e for e in rows)}
    return {
        "steps": state["global_step"],
        "reward_first_quarter": statistics.fmean(rewards[:quarter]) if rewards else None,
        "reward_last_quarter": statistics.fmean(rewards[-quarter:]) if rewards else None,
        "sapo_metrics_mean": gate,
    }


def _cell(block: dict) -> str:
    return f"{block['accuracy']:.3f} [{block['ci95'][0]:.2f}, {block['ci95'][1]:.2f}]"


def comparison_rows(before: dict, after: dict) -> dict[str, tuple[list[bool], list[bool]]]:
    """{row label: (correct before, correct after)}: each subset, all problems, then each one-step operation."""
    flat = lambda result, key: [x for v in result.values() for x in v[key]]  # noqa: E731
    rows = {name: (before[name]["correct"], after[name]["correct"]) for name in before}
    rows["all held-out problems"] = (flat(before, "correct"), flat(after, "correct"))
    ops = flat(before, "operations")
    for op in sorted(set(ops), key=lambda o: ("+-*/".find(o) % 5, o)):
        pick = lambda correct: [c for c, o in zip(correct, ops) if o == op]  # noqa: E731,B023
        rows[f"operation {op or '(none)'}"] = (
            pick(rows["all held-out problems"][0]),
            pick(rows["all held-out problems"][1]),
        )
    return rows


def recipe_digest(path: Path) -> str:
    """sha256 (16 hex digits) of a recipe's settings (the parsed YAML, so comments do not count): the demo quotes a
    seed study only if it was made with the same settings."""
    settings = json.dumps(yaml.safe_load(path.read_text()), sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def seed_context(gain: float, path: Path = SEED_STUDY) -> str | None:
    """Where `gain` falls among the demo recipe's measured seeds (None when the study file is absent or was made with
    another recipe)."""
    if not path.exists():
        return None
    study = json.loads(path.read_text())
    if study["recipe_sha256"] != recipe_digest(RECIPE):
        return f"(docs/results/demo_seeds.json was measured with another version of {RECIPE.name}: no comparison)"
    gains = sorted(run["gain"] for run in study["runs"])
    below = sum(g < gain for g in gains)
    dist = study["aggregate"]["gain"]
    return (
        f"this run's gain {gain:+.3f}; over {len(gains)} seeds of this recipe (docs/results/demo_seeds.md) the gain "
        f"ranged {gains[0]:+.3f} .. {gains[-1]:+.3f}, mean {dist['mean']:+.3f} ± {dist['ci95']:.3f} (95 % t-interval); "
        f"{below} of {len(gains)} seeds gained less than this run"
    )


def report(before: dict, after: dict, training: dict, times: dict, seed_study: bool = False) -> dict:
    from tools.stats import paired_accuracy_diff

    summary = {"subsets": {}, "training": training, "wall_time_s": times}
    print(f"\n{'':42s}{'before':>22s}{'after':>22s}{'gain (paired 95% CI)':>26s}")
    for name, (b, a) in comparison_rows(before, after).items():
        block_b, block_a, gain = accuracy_block(b), accuracy_block(a), paired_accuracy_diff(b, a)
        summary["subsets"][name] = {"before": block_b, "after": block_a, "gain": gain}
        label = f"accuracy, {name} (n={len(b)})"
        change = f"{gain['diff']:+.3f} ± {gain['ci95']:.3f}"
        print(f"{label:42s}{_cell(block_b):>22s}{_cell(block_a):>22s}{change:>26s}")
    for key, label in (("mean_completion_tokens", "mean completion tokens"), ("format_rate", "'#### N' final line")):
        vb = statistics.fmean(v[key] for v in before.values())
        va = statistics.fmean(v[key] for v in after.values())
        print(f"{label:42s}{vb:>22.3f}{va:>22.3f}")
    print(
        f"\ntraining reward (mean over each rollout's sampled completions): {training['reward_first_quarter']:.3f} in the first "
        f"quarter of the {training['steps']} steps -> {training['reward_last_quarter']:.3f} in the last quarter"
    )
    gate = training["sapo_metrics_mean"]
    if gate:
        print("SAPO gate, mean over steps: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in gate.items()))
    print(
        f"wall time: {times['total'] / 60:.1f} min (evaluation {times['eval_before'] + times['eval_after']:.0f} s, "
        f"training {times['train']:.0f} s)"
    )
    context = seed_context(summary["subsets"]["all held-out problems"]["gain"]["diff"]) if seed_study else None
    if context:
        print(context)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed: model init, sampling and the synthetic "
        "training problems (default: the recipe's); the held-out problems stay the same",
    )
    parser.add_argument("--max_steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="training recipe (default: %(default)s)")
    parser.add_argument("--num_eval_examples", type=int, default=128, help="held-out problems, split over subsets")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "outputs" / "demo"))
    parser.add_argument("--model_name_or_path", default=None, help="default: SmolLM2-135M-Instruct (made offline)")
    args = parser.parse_args()
    args.recipe = args.recipe.resolve()
    if not args.recipe.is_file():
        parser.error(f"--recipe {args.recipe}: no such file")
    try:
        recipe = yaml.safe_load(args.recipe.read_text())
    except yaml.YAMLError as e:
        parser.error(f"--recipe {args.recipe}: not valid YAML ({e})")
    if not isinstance(recipe, dict) or "max_completion_length" not in recipe:
        parser.error(f"--recipe {args.recipe}: not a training recipe (no max_completion_length)")
    from trl_sapo.gsm8k.data import HELDOUT_MIX, load_heldout_mix

    if args.num_eval_examples < len(HELDOUT_MIX):
        parser.error(f"--num_eval_examples must be >= {len(HELDOUT_MIX)} (one problem per held-out subset)")

    import torch

    from tools.models import prepare_smollm2

    started = time.time()
    num_threads, thread_reason = pick_num_threads()
    torch.set_num_threads(num_threads)
    model_dir = Path(args.model_name_or_path) if args.model_name_or_path else prepare_smollm2()
    heldout = load_heldout_mix(args.num_eval_examples)
    print(
        f"== SAPO demo: {model_dir.name}, {num_threads} CPU thread(s) ({thread_reason}), output {args.output_dir} ==",
        flush=True,
    )
    if Path(args.output_dir).exists():  # a demo is a fresh run: never resume or mix with an earlier demo
        shutil.rmtree(args.output_dir)

    t0 = time.time()
    before = evaluate_model(str(model_dir), heldout, recipe, "the base model")
    t1 = time.time()
    train_seconds = train(args, model_dir, num_threads)
    t2 = time.time()
    after = evaluate_model(args.output_dir, heldout, recipe, "the trained model")
    times = {"eval_before": t1 - t0, "train": train_seconds, "eval_after": time.time() - t2}
    times["total"] = time.time() - started

    # The seed study's distribution applies only to the default demo (model, recipe, steps, held-out set).
    comparable = args.model_name_or_path is None and args.recipe == RECIPE and args.max_steps is None
    comparable = comparable and args.num_eval_examples == 128
    summary = report(before, after, training_summary(args.output_dir), times, seed_study=comparable)
    summary.update(model=str(model_dir), recipe=str(args.recipe), heldout_sources=HELDOUT_MIX)
    summary.update(recipe_sha256=recipe_digest(args.recipe))
    summary.update(
        threads=num_threads,
        seed=args.seed if args.seed is not None else recipe.get("seed", 42),
    )
    path = Path(args.output_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"summary: {path}; trained model: {args.output_dir}")


if __name__ == "__main__":
    main()
