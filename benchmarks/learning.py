"""SAPO vs GRPO clipping, same trainer, same seeds, off-policy: does the soft gate learn as well or better?

Both arms are `SAPOTrainer`; only `use_sapo_loss` differs (False = GRPOTrainer's clipped loss, ε = 0.2, unchanged).
The regime is off-policy on purpose (`steps_per_generation > gradient_accumulation_steps` and `num_iterations ≥ 2`):
on-policy, r = 1 and the two objectives have the same gradient, so a comparison there would show nothing.

Per run (arm, seed) it writes `<output_dir>/<arm>-seed<seed>/`: the Trainer checkpoints (resumable), `log_history.json`
(every step: rewards, grad norm, `kl_to_init`, `sapo/*` or `clip_ratio/*`), `eval_after.json` and a `done.json` marker.
Re-running skips finished runs and resumes a partial one from its last checkpoint, so a sweep can run in the
background (`nohup nice -n 10 python benchmarks/learning.py ... &`) and be picked up later.

KL to the initial policy: with beta = 0 TRL logs no KL, so a callback computes the exact token-level
KL(π_θ‖π_0) = Σ_v π_θ(v|ctx) log(π_θ(v|ctx)/π_0(v|ctx)), averaged over the completion positions of a fixed probe
batch (held-out prompts + their reference solutions), after every optimizer step. π_0's log-probs on the probe are
computed once at the start, so no second model is kept in memory.

    python benchmarks/learning.py --smoke                          # < 2 min, tiny random model
    python benchmarks/learning.py --seeds 0 1 2 --max_steps 16     # SmolLM2-135M-Instruct, synthetic GSM8K-style
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # scripts/ (plotting) and trl_sapo without an install

from trl_sapo import SAPOConfig, SAPOTrainer  # noqa: E402

ARMS = ("sapo", "grpo")
# Metrics summarised per run (mean over the run's logged steps unless noted in `summarise_run`).
SUMMARY_KEYS = ("reward", "accuracy", "format", "grad_norm", "kl_to_init", "ratio_max", "off_trust_region")


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
def build_datasets(args):
    """(train prompts, held-out problems) from `trl_sapo.data.load_gsm8k`: the synthetic generator or a folder."""
    from trl_sapo.data import load_gsm8k, to_prompts

    train = load_gsm8k(args.dataset, split="train", num_examples=args.num_train, skip_invalid=True)
    heldout = load_gsm8k(args.dataset, split="test", num_examples=args.eval_examples, skip_invalid=True)
    return to_prompts(train), heldout


def probe_batch(tokenizer, heldout, num_probe: int, max_len: int):
    """Fixed probe sequences (training-format chat prompt + reference solution), left-padded, with a mask over the
    solution tokens. Three (P, L) tensors."""
    from trl_sapo.data import to_prompts

    rows = to_prompts(heldout.select(range(min(num_probe, len(heldout)))))
    ids, masks = [], []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(row["answer"], add_special_tokens=False)["input_ids"][:max_len]
        ids.append(p_ids + c_ids)
        masks.append([0] * len(p_ids) + [1] * len(c_ids))
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    target_mask = torch.tensor([[0] * (width - len(m)) + m for m in masks])
    return input_ids, attention, target_mask


class KLToInitCallback(TrainerCallback):
    """Appends `kl_to_init` = mean token KL(π_θ‖π_0) on a fixed probe batch to the trainer's metrics every step."""

    def __init__(self, trainer, input_ids, attention_mask, target_mask):
        self.trainer = trainer
        self.batch = (input_ids, attention_mask)
        # logits at position t predict token t+1: score the positions whose *next* token is a solution token
        self.positions = target_mask[:, 1:].bool()
        self.init_logp = self._log_probs()

    @torch.no_grad()
    def _log_probs(self) -> torch.Tensor:
        model = self.trainer.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        input_ids, attention_mask = (t.to(device) for t in self.batch)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        model.train(was_training)
        return torch.log_softmax(logits[self.positions.to(device)], dim=-1)  # (N positions, V)

    def on_step_end(self, args, state, control, **kwargs):
        logp = self._log_probs()
        kl = (logp.exp() * (logp - self.init_logp.to(logp.device))).sum(-1).mean().item()
        self.trainer._metrics["train"]["kl_to_init"].append(kl)


# --------------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------------
def make_config(args, arm: str, seed: int, run_dir: Path) -> SAPOConfig:
    on_gpu = args.device == "cuda"
    return SAPOConfig(
        output_dir=str(run_dir),
        use_sapo_loss=arm == "sapo",
        loss_type="grpo",  # same aggregation in both arms: token mean per sequence, then sequence mean
        beta=0.0,  # epsilon: GRPOConfig's default 0.2 (the GRPO arm's clip range)
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        steps_per_generation=args.steps_per_generation,
        num_iterations=args.num_iterations,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        logging_steps=1,
        logging_nan_inf_filter=False,  # keep non-finite losses visible in the log
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def length_reward(completions, **kwargs) -> list[float]:
    """min(characters, 200) / 200 (smoke mode only: gives a random model's completions non-zero advantages)."""
    from trl_sapo.rewards import completion_text

    return [min(len(completion_text(c)), 200) / 200 for c in completions]


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def run_one(args, arm: str, seed: int, train_ds, heldout, reward_funcs) -> dict:
    """Train (or resume) one (arm, seed) run, evaluate it, write its files; returns its done.json content."""
    run_dir = Path(args.output_dir) / f"{arm}-seed{seed}"
    done = run_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = make_config(args, arm, seed, run_dir)
    trainer = SAPOTrainer(model, reward_funcs, args=config, train_dataset=train_ds, processing_class=tokenizer)
    probe = probe_batch(tokenizer, heldout, args.num_probe, args.probe_tokens)
    trainer.add_callback(KLToInitCallback(trainer, *probe))

    last_ckpt = get_last_checkpoint(str(run_dir))
    start = time.time()
    trainer.train(resume_from_checkpoint=last_ckpt)
    train_seconds = time.time() - start
    if trainer.state.global_step < args.max_steps:  # stopped early (e.g. SIGTERM handler): leave it resumable
        raise SystemExit(
            f"{run_dir.name} stopped at step {trainer.state.global_step}/{args.max_steps}; re-run to resume"
        )
    history = trainer.state.log_history
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=1))

    eval_after = evaluate_model(args, trainer.model, tokenizer, heldout)
    (run_dir / "eval_after.json").write_text(json.dumps(eval_after, indent=1))
    summary = {
        "arm": arm,
        "seed": seed,
        "resumed_from": last_ckpt,
        "train_seconds": train_seconds,
        "steps": trainer.state.global_step,
        "nonfinite_steps": [
            e["step"] for e in history if "loss" in e and not (is_finite(e["loss"]) and is_finite(e.get("grad_norm")))
        ],
        "eval_after": {k: v for k, v in eval_after.items() if k != "predictions"},
        "summary": summarise_run(history),
    }
    done.write_text(json.dumps(summary, indent=1))
    if not args.keep_checkpoints:  # checkpoints only serve resumption; the log and summary are the results
        for ckpt in run_dir.glob("checkpoint-*"):
            shutil.rmtree(ckpt)
    del trainer, model
    return summary


def step_rows(history: list[dict]) -> list[dict]:
    """Per-step training rows (the final train-summary entry has `train_runtime` instead of a `loss`)."""
    return [e for e in history if "loss" in e and "train_runtime" not in e]


def _reward_key(row: dict, name: str) -> str | None:
    return next((k for k in row if k.startswith("rewards/") and name in k and k.endswith("/mean")), None)


def summarise_run(history: list[dict]) -> dict:
    """Scalar summaries of one run: means over all steps, and over the last half (the 'late' window)."""
    rows = step_rows(history)
    if not rows:
        return {}
    series: dict[str, list[float]] = {k: [] for k in SUMMARY_KEYS}
    for row in rows:
        acc_key, fmt_key = _reward_key(row, "accuracy"), _reward_key(row, "format")
        values = {
            "reward": row.get("reward"),
            "accuracy": row.get(acc_key) if acc_key else None,
            "format": row.get(fmt_key) if fmt_key else None,
            "grad_norm": row.get("grad_norm"),
            "kl_to_init": row.get("kl_to_init"),
            "ratio_max": row.get("sapo/ratio_max"),
            # share of tokens whose ratio left the trust region: SAPO's soft-clipped share (w < 0.5) or GRPO's
            # hard-clipped share (outside [1-ε, 1+ε] on the side that clips), the comparable "off-policy" signal
            "off_trust_region": row.get("sapo/soft_clip_ratio", row.get("clip_ratio/region_mean")),
        }
        for k, v in values.items():
            if is_finite(v):
                series[k].append(float(v))
    out = {}
    for k, xs in series.items():
        if xs:
            late = xs[len(xs) // 2 :]
            out[k] = {"mean": statistics.fmean(xs), "late": statistics.fmean(late), "last": xs[-1], "max": max(xs)}
    return out


def evaluate_model(args, model, tokenizer, heldout) -> dict:
    from trl_sapo.evaluation import evaluate

    model.eval()
    result = evaluate(
        model,
        tokenizer,
        heldout,
        batch_size=args.eval_batch_size,
        max_new_tokens=args.eval_max_new_tokens,
        progress=False,
    )
    model.train()
    return result


# --------------------------------------------------------------------------------------------------------------------
# Aggregation and reporting
# --------------------------------------------------------------------------------------------------------------------
def mean_std(xs: list[float]) -> dict:
    xs = [x for x in xs if is_finite(x)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def aggregate_runs(runs: list[dict], eval_before: dict) -> dict:
    """Per arm: mean ± std over seeds of each run's summaries and held-out accuracy."""
    per_arm = {}
    for arm in sorted({r["arm"] for r in runs}):
        arm_runs = [r for r in runs if r["arm"] == arm]
        stats = {}
        for key in SUMMARY_KEYS:
            for field in ("mean", "late", "max"):
                vals = [r["summary"].get(key, {}).get(field) for r in arm_runs]
                stats[f"{key}/{field}"] = mean_std([v for v in vals if v is not None])
        stats["heldout_accuracy_after"] = mean_std([r["eval_after"].get("accuracy") for r in arm_runs])
        stats["nonfinite_steps"] = sum(len(r["nonfinite_steps"]) for r in arm_runs)
        stats["seeds"] = [r["seed"] for r in arm_runs]
        per_arm[arm] = stats
    return {"heldout_accuracy_before": eval_before.get("accuracy"), "arms": per_arm}


def fmt(ms: dict) -> str:
    if ms["mean"] is None:
        return "n/a"
    return f"{ms['mean']:.3g} ± {ms['std']:.2g}"


ROWS = (
    ("Held-out accuracy after training", "heldout_accuracy_after"),
    ("Train reward (mean over steps)", "reward/mean"),
    ("Train reward (second half)", "reward/late"),
    ("Accuracy reward (second half)", "accuracy/late"),
    ("Format reward (second half)", "format/late"),
    ("Grad norm (mean)", "grad_norm/mean"),
    ("Grad norm (max)", "grad_norm/max"),
    ("KL(π_θ‖π_0) on probe, second half", "kl_to_init/late"),
    ("KL(π_θ‖π_0) on probe, max", "kl_to_init/max"),
    ("Share of tokens off the trust region (SAPO w<0.5 / GRPO clipped)", "off_trust_region/mean"),
    ("Max ratio r (SAPO arm only)", "ratio_max/max"),
)


def markdown_table(result: dict, args) -> str:
    arms = list(result["arms"])
    lines = [
        f"| metric | {' | '.join(arms)} |",
        f"|---|{'---|' * len(arms)}",
    ]
    for label, key in ROWS:
        lines.append(f"| {label} | {' | '.join(fmt(result['arms'][a][key]) for a in arms)} |")
    lines.append(
        f"| Non-finite loss/grad steps (all seeds) | {' | '.join(str(result['arms'][a]['nonfinite_steps']) for a in arms)} |"
    )
    lines.append(f"| Seeds | {' | '.join(str(result['arms'][a]['seeds']) for a in arms)} |")
    before = result["heldout_accuracy_before"]
    before_txt = "n/a" if before is None else f"{before:.3f}"
    header = (
        f"# Learning benchmark: SAPO vs GRPO clipping\n\n"
        f"Model `{args.model}`, dataset `{args.dataset}`, {args.max_steps} optimizer steps, "
        f"{args.num_generations} generations × {args.batch_size // args.num_generations} prompts per step "
        f"(batch {args.batch_size}), steps_per_generation={args.steps_per_generation}, "
        f"num_iterations={args.num_iterations}, lr={args.learning_rate}, temperature={args.temperature}, "
        f"max_completion_length="
        f"{args.max_completion_length}, beta=0, ε=0.2 (GRPO), τ=(1.0, 1.05) (SAPO). Held-out: "
        f"{args.eval_examples} problems, greedy, {args.eval_max_new_tokens} new tokens; accuracy before training "
        f"{before_txt}. Values: mean ± std over seeds.\n\n"
    )
    return header + "\n".join(lines) + "\n"


def make_plot(args, runs: list[dict], path: Path) -> str | None:
    try:
        from scripts.plot_training import load_log_history, make_training_figure
    except ImportError as err:  # the plotting helper is optional for the sweep itself
        print(f"[learning] no plot: {err}")
        return None
    histories = {}
    for r in runs:
        log = Path(args.output_dir) / f"{r['arm']}-seed{r['seed']}" / "log_history.json"
        history = json.loads(log.read_text()) if log.exists() else load_log_history(log.parent)
        # beta = 0, so TRL logs no `kl`: plot our kl_to_init (KL to the initial = reference policy) in that panel
        histories[f"{r['arm']}-seed{r['seed']}"] = [
            {**e, "kl": e["kl_to_init"]} if "kl_to_init" in e else e for e in history
        ]
    fig = make_training_figure(histories, smooth=args.plot_smooth, title="SAPO vs GRPO clipping (per seed)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return str(path)


# --------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default=None, help="HF folder; default: SmolLM2-135M-Instruct (tiny random with --smoke)"
    )
    p.add_argument(
        "--dataset",
        default="synthetic:num_steps=1-2,max_value=20",
        help="load_gsm8k source: 'synthetic[:options]' or a GSM8K folder (../shared/data/gsm8k)",
    )
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--max_steps", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=3e-5)
    p.add_argument("--num_generations", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=4, help="completions per optimizer step (per device)")
    p.add_argument("--steps_per_generation", type=int, default=2)
    p.add_argument("--num_iterations", type=int, default=2)
    p.add_argument("--max_completion_length", type=int, default=96)
    p.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="sampling temperature (at 1.0 SmolLM2-135M almost never solves a problem: no reward variance)",
    )
    p.add_argument("--num_train", type=int, default=256)
    p.add_argument("--eval_examples", type=int, default=12)
    p.add_argument("--eval_batch_size", type=int, default=16)
    p.add_argument("--eval_max_new_tokens", type=int, default=64)
    p.add_argument("--num_probe", type=int, default=4, help="probe sequences for kl_to_init")
    p.add_argument("--probe_tokens", type=int, default=64, help="solution tokens per probe sequence")
    p.add_argument("--save_steps", type=int, default=4)
    p.add_argument("--keep_checkpoints", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--output_dir",
        default=None,
        help="per-run folders, resumable (default: benchmarks/out/learning, or learning-smoke with --smoke)",
    )
    p.add_argument(
        "--results_dir",
        default=None,
        help="learning.json / .md / .png (default: docs/results; with --smoke: --output_dir)",
    )
    p.add_argument("--plot_smooth", type=float, default=0.0, help="EMA weight for the plot (0 = raw)")
    p.add_argument(
        "--report_only",
        action="store_true",
        help="no training: write the report from the finished runs (same arguments as the sweep)",
    )
    p.add_argument("--smoke", action="store_true", help="< 2 min: tiny random model, 2 steps, 1 seed, both arms")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.max_steps, args.num_train = args.seeds[:1], 2, 16
        args.max_completion_length, args.eval_examples, args.eval_max_new_tokens = 16, 4, 16
        args.num_generations, args.batch_size, args.num_probe, args.probe_tokens = 2, 4, 2, 16
        args.save_steps, args.learning_rate, args.temperature = 1, 1e-3, 1.0
    if args.output_dir is None:
        args.output_dir = "benchmarks/out/learning-smoke" if args.smoke else "benchmarks/out/learning"
    if args.results_dir is None:
        args.results_dir = args.output_dir if args.smoke else "docs/results"
    if args.batch_size % args.num_generations:
        p.error("--batch_size must be a multiple of --num_generations")
    return args


def resolve_model(args) -> None:
    if args.model is not None:
        return
    from trl_sapo.models import build_tiny_model, prepare_smollm2

    smollm2 = prepare_smollm2()
    if args.smoke:
        tiny = Path(args.output_dir) / "tiny-model"
        if not (tiny / "config.json").exists():
            build_tiny_model(tiny, tokenizer_dir=smollm2)
        args.model = str(tiny)
    else:
        args.model = str(smollm2)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    resolve_model(args)
    if args.report_only:
        return write_report(args, *collect_finished(args))
    from trl_sapo.rewards import get_reward_funcs

    train_ds, heldout = build_datasets(args)
    reward_funcs = get_reward_funcs(["accuracy", "format"])
    if args.smoke:  # a random model never scores on accuracy/format: add a dense reward so gradients are non-zero
        reward_funcs.append(length_reward)

    before_path = Path(args.output_dir) / "eval_before.json"
    if before_path.exists():
        eval_before = json.loads(before_path.read_text())
    else:  # the initial policy is the same for every run: evaluate it once
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        if args.device == "cuda":
            model = model.to("cuda", dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        eval_before = {k: v for k, v in evaluate_model(args, model, tokenizer, heldout).items() if k != "predictions"}
        before_path.write_text(json.dumps(eval_before, indent=1))
        del model

    plan = [(arm, seed) for seed in args.seeds for arm in args.arms]  # arms interleaved: a partial sweep is paired
    runs = []
    for arm, seed in tqdm(plan, desc="runs", unit="run"):
        runs.append(run_one(args, arm, seed, train_ds, heldout, reward_funcs))

    return write_report(args, runs, eval_before, incomplete=[])


def collect_finished(args) -> tuple[list[dict], dict, list[dict]]:
    """Finished runs (done.json), the shared before-eval, and the progress of unfinished runs (for --report_only)."""
    out_dir = Path(args.output_dir)
    before_path = out_dir / "eval_before.json"
    eval_before = json.loads(before_path.read_text()) if before_path.exists() else {}
    runs, incomplete = [], []
    for seed in args.seeds:
        for arm in args.arms:
            run_dir = out_dir / f"{arm}-seed{seed}"
            if (run_dir / "done.json").exists():
                runs.append(json.loads((run_dir / "done.json").read_text()))
                continue
            last = get_last_checkpoint(str(run_dir)) if run_dir.exists() else None
            steps = json.loads((Path(last) / "trainer_state.json").read_text())["global_step"] if last else 0
            incomplete.append({"arm": arm, "seed": seed, "checkpointed_steps": steps, "max_steps": args.max_steps})
    return runs, eval_before, incomplete


def write_report(args, runs: list[dict], eval_before: dict, incomplete: list[dict]) -> dict:
    """learning.json / .md / .png in --results_dir from the finished runs."""
    result = aggregate_runs(runs, eval_before) if runs else {"heldout_accuracy_before": None, "arms": {}}
    result["config"] = dict(vars(args))
    result["runs"] = runs
    result["incomplete_runs"] = incomplete
    result["eval_before"] = eval_before
    result["torch"] = torch.__version__
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = "learning-smoke" if args.smoke else "learning"
    (results_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    table = markdown_table(result, args) if runs else "# Learning benchmark: no finished run yet\n"
    if incomplete:
        table += (
            "\nUnfinished runs (resumable): "
            + ", ".join(
                f"{r['arm']}-seed{r['seed']} ({r['checkpointed_steps']}/{r['max_steps']} steps checkpointed)"
                for r in incomplete
            )
            + "\n"
        )
    plot = make_plot(args, runs, results_dir / f"{stem}.png") if runs else None
    if plot:
        table += f"\n![training curves]({Path(plot).name})\n"
    (results_dir / f"{stem}.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
