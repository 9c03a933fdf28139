"""SAPO vs GRPO clipping, same trainer, same seeds, off-policy: which objective learns better, and which is stabler?

Every arm is the real `SAPOTrainer`; only the objective differs: `grpo` is `use_sapo_loss=False` (GRPOTrainer's
clipped loss, ε = 0.2), `sapo` the paper's gate (τ_pos, τ_neg) = (1.0, 1.05), `sapo-tauK` a tighter gate
(K, 1.05·K). The regime is off-policy on purpose (several optimizer steps per rollout): on-policy r = 1 and the
objectives have the same gradient, so a comparison there would show nothing. Two tasks:

- `--task copy` (default; power and stress): the controlled task of `tools.copy_task` ("repeat the first
  digit", a 2-layer random-init Llama, ~25 ms per step on one core). Regimes: `base` (lr 1e-3, 4 optimizer steps
  per rollout, 150 steps), `reuse` (lr 1e-3, 8 steps per rollout × num_iterations 2 = 16 updates per rollout,
  300 steps) and `stress` (as `reuse` at lr 3e-3). The 170 runs of the study took about an hour of training on one
  (shared) CPU core (docs/results.md, generated from the JSON, has the measured times).
- `--task gsm8k` (realism): a causal LM (default SmolLM2-135M-Instruct) trained on the `make demo` recipe's data and
  reward, only the objective changed. Regimes: `demo` (the recipe's learning rate, 2 updates per rollout and step
  count) and `reuse` (lr 1e-5, 8 updates per rollout, 32 steps). Held-out accuracy by greedy decoding on the demo's
  128 problems (`trl_sapo.gsm8k.data.HELDOUT_MIX`: half in unseen phrasings, disjoint from training by
  construction), per operation too. `--dataset`, `--model`, `--device cuda`, `--use_vllm`, `--max_completion_length`
  and `--learning_rate` run the same study on real GSM8K with a larger model on a GPU (docs/results.md shows the
  command).

Per step every run records the training reward, entropy, grad norm, the ratio r = π_θ/π_old seen by the loss
(max and mean |log r|, measured the same way for both arms), KL(π_θ‖π_0) and the per-step KL(π_t‖π_{t-1}) on a fixed
probe batch (held-out prompts + reference answers). Per run: held-out score before/after, the mean training reward
(sample efficiency), steps to learn, collapse (reward learned then lost: final 20-step mean < half the peak, or any
non-finite step). Per arm: mean ± 95 % t-interval over seeds, paired per-seed differences to `grpo` (same seed =
same initial model and data order), and the τ whose per-step KL matches ε = 0.2's.

Results go to `--results_dir` (default docs/results): learning_<task>.{json,md,png}. Each (regime, arm, seed) run
writes `<output_dir>/<regime>/<arm>-seed<seed>/done.json`; re-running skips finished runs (a copy run takes seconds,
so an interrupted run restarts; a gsm8k run resumes from its last checkpoint), so a sweep can be stopped and
continued, `nice`d in the background. A run in progress is locked by its process (`running.pid`), so a second copy of
the same command on another core takes the runs the first has not; each copy's report covers the runs it saw, so
redraw it with --report_only when both are done.

    python -m benchmarks.learning --smoke                                     # < 1 min, tiny settings
    python -m benchmarks.learning --task copy --seeds 0 1 2 3 4 5 6 7 8 9     # the study (~1 h, 1 core)
    python -m benchmarks.learning --task gsm8k --seeds 0 1 2 3 4              # SmolLM2, both regimes (hours)
    python -m benchmarks.learning --task copy --report_only                   # redraw the report from the runs
                                                                              # (or, without them, the committed JSON)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from trl_sapo.tools.offline import use_offline_mode

use_offline_mode()

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from tools.stats import mean_ci, paired_diff_ci  # noqa: E402
from trl_sapo import SAPOConfig, SAPOTrainer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO_ROOT / "recipes" / "smollm2-135m_cpu_demo.yaml"
# arm -> SAPOConfig fields. τ_neg = 1.05 τ_pos keeps the paper's asymmetry at every width.
ARMS = {
    "grpo": {"use_sapo_loss": False, "epsilon": 0.2},
    "sapo": {"use_sapo_loss": True, "sapo_tau_pos": 1.0, "sapo_tau_neg": 1.05},
    "sapo-tau2": {"use_sapo_loss": True, "sapo_tau_pos": 2.0, "sapo_tau_neg": 2.1},
    "sapo-tau4": {"use_sapo_loss": True, "sapo_tau_pos": 4.0, "sapo_tau_neg": 4.2},
    "sapo-tau8": {"use_sapo_loss": True, "sapo_tau_pos": 8.0, "sapo_tau_neg": 8.4},
    "sapo-tau16": {"use_sapo_loss": True, "sapo_tau_pos": 16.0, "sapo_tau_neg": 16.8},
    "sapo-tau32": {"use_sapo_loss": True, "sapo_tau_pos": 32.0, "sapo_tau_neg": 33.6},
}
MAIN_ARMS = ("grpo", "sapo", "sapo-tau2", "sapo-tau4", "sapo-tau8")  # every regime; τ 16/32 only probe the KL match
# task -> regime -> optimisation settings. Updates per rollout = steps_per_generation x num_iterations, counted in
# optimizer steps (run_one converts to TRL's micro-batches when the recipe accumulates gradients).
REGIMES = {
    "copy": {
        "base": {"learning_rate": 1e-3, "steps_per_generation": 4, "num_iterations": 1, "max_steps": 150},
        "reuse": {"learning_rate": 1e-3, "steps_per_generation": 8, "num_iterations": 2, "max_steps": 300},
        "stress": {"learning_rate": 3e-3, "steps_per_generation": 8, "num_iterations": 2, "max_steps": 300},
    },
    # Asynchronous (AsyncSAPOTrainer, transformers rollout worker): every optimizer step trains on a fresh
    # micro-batch generated by the policy of exactly `fixed_lag` steps before (lag0: on-policy, r = 1)
    "copy-async": {f"lag{k}": {"learning_rate": 1e-3, "fixed_lag": k, "max_steps": 150} for k in (0, 2, 4, 8)},
    "gsm8k": {
        "demo": None,  # the demo recipe's learning rate, steps per rollout and step count (demo_recipe)
        # heavy reuse: 4 optimizer steps per rollout x 2 passes = 8 updates per rollout, at a learning rate below the
        # demo's (the copy task's `stress` regime shows what a high one does under reuse)
        "reuse": {"learning_rate": 1e-5, "steps_per_generation": 4, "num_iterations": 2, "max_steps": 32},
    },
}
# Paired seeds per regime the SmolLM2 study plans (docs_numbers says "partial" below this; issue 17 asks for >= 5).
PLANNED_GSM8K_SEEDS = 5
# The trainer settings each run records (done.json): what the regime and the recipe actually set.
RECORDED_SETTINGS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "steps_per_generation", "num_iterations", "num_generations", "max_steps", "temperature",
                     "max_completion_length", "loss_type", "reward_weights")  # fmt: skip
SERIES = ("reward", "entropy", "grad_norm", "ratio_max", "abs_log_ratio", "kl_to_init", "step_kl")
# Optional per-step series: the objective's own diagnostics (SAPO's gate or GRPO's clipping) and completion length.
EXTRA_SERIES = {
    "completion_length": "completions/mean_length",
    "reward_total": "reward",  # gsm8k: the `reward` series is the accuracy part; this one adds the length penalty
    "clip_ratio": "clip_ratio/region_mean",
    "sapo_gate_mean": "sapo/gate_mean",
    "sapo_grad_weight_mean": "sapo/grad_weight_mean",
    "sapo_soft_clip_ratio": "sapo/soft_clip_ratio",
}
WINDOW = 20  # steps in the moving average that defines "learned", "final" and "collapsed" (copy task)


# --------------------------------------------------------------------------------------------------------------------
# Instrumentation shared by both arms
# --------------------------------------------------------------------------------------------------------------------
class RatioLoggingTrainer(SAPOTrainer):
    """SAPOTrainer that also logs the ratio r = π_θ/π_old over the completion tokens of each micro-batch, computed the
    same way for both arms (one extra no-grad forward), since GRPO's own metrics only report clipped fractions."""

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        old = inputs.get("old_per_token_logps")
        mode = "train" if self.model.training else "eval"
        if old is not None and mode == "train":
            input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            with torch.no_grad():
                logps = self._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, inputs["completion_ids"].size(1)
                )[0]
            mask = inputs["completion_mask"].bool()
            log_ratio = (logps - old)[mask]
            self._metrics[mode]["study/ratio_max"].append(log_ratio.max().exp().item())
            self._metrics[mode]["study/abs_log_ratio"].append(log_ratio.abs().mean().item())
        return loss


class ProbeKLCallback(TrainerCallback):
    """After every optimizer step: KL(π_θ‖π_0) and KL(π_t‖π_{t-1}), token-level, exact over the vocabulary, averaged
    over the answer positions of a fixed probe batch. π_0's log-probs are computed once (no second model)."""

    def __init__(self, trainer, input_ids, attention_mask, target_mask):
        self.trainer = trainer
        self.batch = (input_ids, attention_mask)
        self.positions = target_mask[:, 1:].bool()  # logits at t predict token t+1
        self.init_logp = self.previous_logp = self._log_probs()

    def on_train_begin(self, args, state, control, **kwargs):
        # after a resume the trainer has loaded the checkpoint's weights: the next step's KL is to those, not to π_0
        self.previous_logp = self._log_probs()

    @torch.no_grad()
    def _log_probs(self) -> torch.Tensor:
        model = self.trainer.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        input_ids, attention_mask = (t.to(device) for t in self.batch)
        with plain_attention(model):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        model.train(was_training)
        return torch.log_softmax(logits[self.positions.to(device)], dim=-1).cpu()  # (N positions, V)

    @staticmethod
    def _kl(logp: torch.Tensor, ref: torch.Tensor) -> float:
        return (logp.exp() * (logp - ref)).sum(-1).mean().item()

    def on_step_end(self, args, state, control, **kwargs):
        logp = self._log_probs()
        metrics = self.trainer._metrics["train"]
        metrics["study/kl_to_init"].append(self._kl(logp, self.init_logp))
        metrics["study/step_kl"].append(self._kl(logp, self.previous_logp))
        self.previous_logp = logp


def probe_batch(tokenizer, texts: list[tuple[str, str]]):
    """(input_ids, attention_mask, target_mask) for (prompt text, answer text) pairs, left-padded; target_mask marks
    the answer tokens."""
    ids, masks = [], []
    for prompt, answer in texts:
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids.append(p_ids + a_ids)
        masks.append([0] * len(p_ids) + [1] * len(a_ids))
    width, pad = max(map(len, ids)), tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    target = torch.tensor([[0] * (width - len(m)) + m for m in masks])
    return input_ids, attention, target


@contextlib.contextmanager
def plain_attention(model):
    """The async trainer's model attends through tree packing ("tree_fa3"), which needs packed inputs: ordinary
    forwards (probe, greedy evaluation) switch it to SDPA for their duration. A no-op for the sync trainer's model."""
    tree = model.config._attn_implementation == "tree_fa3"
    if tree:
        model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        if tree:
            model.set_attn_implementation("tree_fa3")


def async_copy_trainer(args, task: dict, arm: str, seed: int, run_dir: Path, settings: dict):
    """copy-async: AsyncSAPOTrainer + transformers rollout worker at the regime's fixed lag; one fresh micro-batch
    of --batch_size completions per optimizer step (no reuse: staleness is the only source of off-policyness)."""
    from trl_sapo.async_sapo import AsyncSAPOConfig

    init = run_dir / "init-model"  # the async trainer loads its model (and the worker its copy) from a folder
    task["model"].save_pretrained(init)
    task["tokenizer"].save_pretrained(init)
    settings = {k: v for k, v in settings.items() if k not in ("steps_per_generation", "num_iterations")}
    config = AsyncSAPOConfig(
        output_dir=str(run_dir), **ARMS[arm], **settings, per_device_train_batch_size=args.batch_size,
        max_staleness=settings["fixed_lag"], weight_sync_steps=1, token_budget=-1, rollout_backend="transformers",
        gradient_checkpointing=False, lr_scheduler_type="constant", seed=seed, data_seed=seed, use_cpu=True,
        logging_steps=1, logging_nan_inf_filter=False, save_strategy="no", report_to="none", disable_tqdm=True,
    )  # fmt: skip
    trainer = async_ratio_logging_trainer()(
        str(init), task["reward_funcs"], args=config, train_dataset=task["train"], processing_class=task["tokenizer"]
    )
    return config, trainer


def async_ratio_logging_trainer():
    """AsyncSAPOTrainer that logs r = π_θ/π_behaviour over each micro-batch's trained tokens as RatioLoggingTrainer
    does (study/ratio_max, study/abs_log_ratio), read off the loss's own forward (a hook: no extra forward)."""
    from trl_sapo.async_sapo import AsyncSAPOTrainer

    class AsyncRatioLoggingTrainer(AsyncSAPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            captured = []
            handle = model.register_forward_hook(lambda module, args, output: captured.append(output))
            try:
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                handle.remove()
            selected = inputs["token_index"] >= 0
            with torch.no_grad():
                logps = captured[-1].log_probs.flatten()[inputs["token_index"][selected]].float()
                log_ratio = logps - inputs["old_log_probs"][selected].float()
            self._metrics["train"]["study/ratio_max"].append(log_ratio.max().exp().item())
            self._metrics["train"]["study/abs_log_ratio"].append(log_ratio.abs().mean().item())
            return loss

    return AsyncRatioLoggingTrainer


# --------------------------------------------------------------------------------------------------------------------
# Tasks: (trainer inputs, probe, evaluation) for one seed
# --------------------------------------------------------------------------------------------------------------------
def copy_task_setup(args, seed: int) -> dict:
    from tools import copy_task

    tokenizer = copy_task.make_tokenizer()
    train, heldout = copy_task.make_prompts(num_heldout=args.eval_examples)
    probe = [(p, copy_task.target(p)) for p in heldout["prompt"][: args.num_probe]]
    return {
        "model": copy_task.make_model(seed),
        "tokenizer": tokenizer,
        "reward_funcs": copy_task.copy_reward,
        "train": train,
        "probe": probe_batch(tokenizer, probe),
        "evaluate": lambda model: copy_task.evaluate_greedy(model, tokenizer, heldout),
        "config": {"max_completion_length": copy_task.ANSWER_LENGTH, "temperature": 1.0, "loss_type": "grpo"},
    }


def demo_recipe() -> dict:
    """The settings of recipes/smollm2-135m_cpu_demo.yaml (the `make demo` recipe) that the gsm8k task reuses."""
    import yaml

    return yaml.safe_load(DEMO_RECIPE.read_text())


def gsm8k_heldout(args) -> dict:
    """{subset: Dataset}: the demo's held-out mix (synthetic; half in unseen phrasings, disjoint from training by
    construction), or the first --eval_examples problems of the test split of --dataset."""
    from trl_sapo.gsm8k.data import load_gsm8k, load_heldout_mix

    if args.dataset is None:
        return load_heldout_mix(args.eval_examples)
    test = load_gsm8k(args.dataset, split="test")
    return {"test split": test.select(range(min(args.eval_examples, len(test))))}


def overlong_cache(args) -> int | None:
    """The recipe's `overlong` window (soft_punish_cache) as the same fraction of --max_completion_length (16 of 96
    tokens; 85 of 512), so the penalty keeps its shape when the completion limit changes; None = the reward's
    default."""
    recipe = demo_recipe()
    if recipe.get("soft_punish_cache") is None:
        return None
    return max(1, round(recipe["soft_punish_cache"] * args.max_completion_length / recipe["max_completion_length"]))


def gsm8k_task_setup(args, seed: int) -> dict:
    """A causal LM (default SmolLM2-135M-Instruct) trained on the demo recipe's data and settings, or on --dataset;
    held-out = the demo's problems (or --dataset's test split). Seeds change the training problems' order (and, for
    the synthetic data, which problems) and the sampling; the held-out problems are the same in every run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.models import prepare_smollm2
    from trl_sapo.gsm8k.data import load_gsm8k, to_prompts
    from trl_sapo.gsm8k.evaluation import evaluate
    from trl_sapo.gsm8k.rewards import get_reward_funcs
    from trl_sapo.gsm8k.synthetic import operations

    recipe = demo_recipe()
    model_path = args.model or str(prepare_smollm2())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = args.dataset or recipe["dataset_name"]
    num_train = None if args.dataset else recipe["num_train_examples"]
    train = to_prompts(load_gsm8k(dataset, split="train", num_examples=num_train, seed=seed))
    heldout = gsm8k_heldout(args)
    first = next(iter(heldout.values()))
    probe = [
        (tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True), row["answer"])
        for row in to_prompts(first.select(range(min(args.num_probe, len(first)))))
    ]

    def evaluate_model(model):
        correct, ops, out = [], [], {}
        for name, problems in heldout.items():
            result = evaluate(
                model, tokenizer, problems, batch_size=args.eval_batch_size, max_new_tokens=args.eval_max_new_tokens
            )
            correct += [p["correct"][0] for p in result["predictions"]]
            ops += [operations(answer) for answer in problems["answer"]]
            out[name] = result["accuracy"]
        return {"accuracy": sum(correct) / len(correct), "subsets": out, "correct": correct, "operations": ops}

    config = {k: recipe[k] for k in ("temperature", "max_grad_norm", "gradient_checkpointing") if k in recipe}
    config["loss_type"] = recipe.get("loss_type", "grpo")
    config["reward_weights"] = recipe.get("reward_weights")
    cache = overlong_cache(args)
    config["max_completion_length"] = args.max_completion_length
    if args.device == "cuda":
        config.update(bf16=True, use_vllm=args.use_vllm, vllm_mode="colocate", gradient_checkpointing=True)
    return {
        "model": AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        "tokenizer": tokenizer,
        "reward_funcs": get_reward_funcs(recipe["reward_funcs"], args.max_completion_length, cache),
        "rewards": {"reward_funcs": recipe["reward_funcs"], "soft_punish_cache": cache},
        "train": train,
        "probe": probe_batch(tokenizer, probe),
        "evaluate": evaluate_model,
        "config": config,
    }


TASKS = {"copy": copy_task_setup, "copy-async": copy_task_setup, "gsm8k": gsm8k_task_setup}
COPY_TASKS = ("copy", "copy-async")  # the copy task's scoring and report rows, synchronous or not


# --------------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------------
LOCK_NAME = "running.pid"


def claim_run(run_dir: Path) -> bool:
    """Take <run_dir>/running.pid for this process; False while another live process holds it. A lock left by a
    dead process (killed, machine restarted) is taken over. Lets several copies of one study command share the runs."""
    lock = run_dir / LOCK_NAME
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(lock.read_text().strip() or 0)
            os.kill(holder, 0)  # raises when no such process
            if holder != os.getpid():
                return False
        except (ValueError, ProcessLookupError):
            pass  # stale: take it over
        except PermissionError:  # a live process of another user
            return False
        fd = os.open(lock, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_one(args, regime: str, arm: str, seed: int) -> dict | None:
    """Train one (regime, arm, seed) run (resuming a checkpointed gsm8k run), evaluate it, write done.json. None when
    another process is training it."""
    run_dir = Path(args.output_dir) / regime / f"{arm}-seed{seed}"
    done = run_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    if not claim_run(run_dir):
        print(f"skipping {run_dir}: another process is training it", file=sys.stderr)
        return None
    try:
        if done.exists():  # finished by the other process between the two checks
            return json.loads(done.read_text())
        return train_and_evaluate(args, regime, arm, seed, run_dir)
    finally:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)


def train_and_evaluate(args, regime: str, arm: str, seed: int, run_dir: Path) -> dict:
    task = TASKS[args.task](args, seed)
    eval_before = evaluate_before(args, task)
    checkpointing = args.task == "gsm8k"
    settings = {
        "num_generations": args.num_generations,
        **regime_settings(args, regime),
        **task["config"],  # incl. loss_type: one aggregation for every arm (copy: grpo; gsm8k: the recipe's)
    }
    if args.task == "copy-async":
        config, trainer = async_copy_trainer(args, task, arm, seed, run_dir, settings)
        return finish_run(args, regime, arm, seed, run_dir, task, trainer, config, eval_before, resume_from=None)
    # TRL counts steps_per_generation in micro-batches: an optimizer step is gradient_accumulation_steps of them
    # (the demo recipe accumulates 2 halves of each step's completions, which halves the peak memory).
    accumulation = args.gradient_accumulation_steps
    settings["steps_per_generation"] *= accumulation
    config = SAPOConfig(
        output_dir=str(run_dir),
        **ARMS[arm],
        **settings,
        per_device_train_batch_size=args.batch_size // accumulation,
        gradient_accumulation_steps=accumulation,
        beta=0.0,
        lr_scheduler_type="constant",
        seed=seed,
        data_seed=seed,
        use_cpu=args.device == "cpu",
        logging_steps=1,
        logging_nan_inf_filter=False,  # keep non-finite losses visible in the log
        save_strategy="steps" if checkpointing else "no",
        save_steps=args.save_steps,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = RatioLoggingTrainer(
        task["model"],
        task["reward_funcs"],
        args=config,
        train_dataset=task["train"],
        processing_class=task["tokenizer"],
    )
    resume_from = get_last_checkpoint(str(run_dir)) if checkpointing else None
    return finish_run(args, regime, arm, seed, run_dir, task, trainer, config, eval_before, resume_from)


def finish_run(args, regime, arm, seed, run_dir, task, trainer, config, eval_before, resume_from) -> dict:
    """Train (with the KL probe), evaluate and write the run's done.json (atomically); delete its checkpoints."""
    done = run_dir / "done.json"
    trainer.add_callback(ProbeKLCallback(trainer, *task["probe"]))
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.time() - start
    history = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    with plain_attention(trainer.model):
        eval_after = task["evaluate"](trainer.model)
    record = {
        "task": args.task,
        "regime": regime,
        "arm": arm,
        "seed": seed,
        "steps": trainer.state.global_step,
        "train_seconds": train_seconds,  # of this process only: a resumed run counts from its checkpoint
        "resumed_from": resume_from and Path(resume_from).name,
        "settings": {**{key: getattr(config, key, None) for key in RECORDED_SETTINGS}, **task.get("rewards", {})},
        "eval_before": eval_before,
        "eval_after": eval_after,
        "series": {key: per_step_series(history, key, REWARD_LOG_KEY[args.task]) for key in SERIES},
        "extra_series": {key: [e.get(name) for e in history] for key, name in EXTRA_SERIES.items()},
        "nonfinite_steps": [
            e["step"] for e in history if not (_finite(e.get("loss")) and _finite(e.get("grad_norm")))
        ],
    }
    record["summary"] = summarise_run(record)
    scratch = done.with_suffix(".tmp")
    scratch.write_text(json.dumps(record))
    os.replace(scratch, done)  # atomic: another process polls for done.json
    for ckpt in [*run_dir.glob("checkpoint-*"), *run_dir.glob("init-model")]:  # done.json holds the results
        shutil.rmtree(ckpt)
    return record


def evaluate_before(args, task: dict) -> dict:
    """Held-out score of the initial model. gsm8k: the same pretrained model in every run, so evaluated once and
    cached in <output_dir>/eval_before.json; copy: the random initialisation depends on the seed."""
    if args.task in COPY_TASKS:
        return task["evaluate"](task["model"])
    path = Path(args.output_dir) / "eval_before.json"
    if not path.exists():
        scratch = path.with_suffix(f".{os.getpid()}.tmp")  # another process may be reading or writing it too
        scratch.write_text(json.dumps(task["evaluate"](task["model"].to(args.device))))
        os.replace(scratch, path)
    return json.loads(path.read_text())


def regime_settings(args, regime: str) -> dict:
    """The regime's optimisation settings (gsm8k `demo`: the demo recipe's); --max_steps / --learning_rate override."""
    settings = REGIMES[args.task][regime]
    if settings is None:
        recipe = demo_recipe()
        settings = {k: recipe[k] for k in ("learning_rate", "num_iterations", "max_steps")}
        settings["steps_per_generation"] = recipe["steps_per_generation"] // recipe.get(
            "gradient_accumulation_steps", 1
        )
    settings = dict(settings)
    if args.max_steps is not None:
        settings["max_steps"] = args.max_steps
    if args.learning_rate is not None:
        settings["learning_rate"] = args.learning_rate
    return settings


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# The logged metric behind the `reward` series: gsm8k's is the accuracy reward alone (the share of sampled completions
# with the right answer), whatever other rewards (the overlong penalty) the recipe adds to the training signal.
REWARD_LOG_KEY = {"copy": "reward", "copy-async": "reward", "gsm8k": "rewards/accuracy_reward/mean"}


def per_step_series(history: list[dict], key: str, reward_name: str = "reward") -> list[float | None]:
    """One value per optimizer step. Rollout metrics (reward) are logged only on the steps that generate; the steps
    that reuse that rollout carry its value forward, so every series is indexed by optimizer step."""
    name = {"reward": reward_name, "entropy": "entropy", "grad_norm": "grad_norm"}.get(key, f"study/{key}")
    values, last = [], None
    for entry in history:
        value = entry.get(name)
        if _finite(value):
            last = float(value)
        elif key == "reward":
            value = last
        values.append(float(value) if _finite(value) else None)
    return values


def moving_average(xs: list[float | None], window: int = WINDOW) -> list[float]:
    values = [x for x in xs if x is not None]
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def summarise_run(record: dict) -> dict:
    """Scalars of one run. `learned_at`: first step whose 20-step mean training reward reaches 0.8; `final`: mean
    training reward over the last 20 % of the steps (at least 20 on the copy task)."""
    s = record["series"]
    reward_ma = moving_average(s["reward"])
    peak = max(reward_ma)
    # copy: the last WINDOW steps at least (runs of 150-300 steps); gsm8k runs are 16-32 steps: the last 20 %
    window = WINDOW if record["task"] in COPY_TASKS else 1
    final = statistics.fmean([x for x in s["reward"] if x is not None][-max(window, len(reward_ma) // 5) :])
    finite = lambda key: [x for x in s[key] if x is not None]  # noqa: E731
    late = lambda key: finite(key)[len(finite(key)) // 2 :]  # noqa: E731
    score_key = "reward" if record["task"] in COPY_TASKS else "accuracy"
    return {
        "heldout_before": record["eval_before"][score_key],
        "heldout_after": record["eval_after"][score_key],
        "train_reward_mean": statistics.fmean(finite("reward")),
        "train_reward_final": final,
        "learned_at": next((i + 1 for i, x in enumerate(reward_ma) if x >= 0.8), None),
        "collapsed": bool(record["nonfinite_steps"]) or (peak >= 0.5 and final < 0.5 * peak),
        "kl_to_init_final": finite("kl_to_init")[-1],
        "step_kl_mean": statistics.fmean(finite("step_kl")),
        # early = first 20 % of the steps, before the arms differ in how much they have learned (a policy that has
        # learned more is more peaked and moves less per step, which confounds the whole-run mean)
        "step_kl_early": statistics.fmean(finite("step_kl")[: max(1, len(finite("step_kl")) // 5)]),
        "entropy_final": statistics.fmean(late("entropy")),
        "grad_norm_mean": statistics.fmean(finite("grad_norm")),
        "grad_norm_max": max(finite("grad_norm")),
        "ratio_max": max(finite("ratio_max"), default=None),
        "abs_log_ratio_mean": statistics.fmean(finite("abs_log_ratio")) if finite("abs_log_ratio") else None,
        "nonfinite_steps": len(record["nonfinite_steps"]),
    }


# --------------------------------------------------------------------------------------------------------------------
# Aggregation and report
# --------------------------------------------------------------------------------------------------------------------
ROWS = (  # (label, summary key)
    ("Held-out score after training", "heldout_after"),
    ("Mean training reward (sample efficiency)", "train_reward_mean"),
    ("Final training reward (last 20 % of steps)", "train_reward_final"),
    ("Steps until 20-step reward ≥ 0.8 (runs that got there)", "learned_at"),
    ("KL(π_θ‖π_0) at the end", "kl_to_init_final"),
    ("Per-step KL(π_t‖π_{t-1}), mean", "step_kl_mean"),
    ("Per-step KL, first 20 % of steps", "step_kl_early"),
    ("Entropy, second half", "entropy_final"),
    ("Grad norm, mean", "grad_norm_mean"),
    ("Grad norm, max", "grad_norm_max"),
    ("Max ratio r seen by the loss", "ratio_max"),
    ("Mean \\|log r\\| seen by the loss", "abs_log_ratio_mean"),  # escaped: a table cell
)


# The 0.8 training-reward threshold is the copy task's "learned" mark; SmolLM2 on GSM8K sits at ~0.1-0.3 reward,
# where these rows would read "n/a" and "all runs".
COPY_ONLY_KEYS = frozenset({"learned_at", "never_learned"})


PAIRED_KEYS = ("heldout_after", "train_reward_mean", "train_reward_final", "step_kl_early", "abs_log_ratio_mean")


def aggregate(runs: list[dict]) -> dict:
    """regime -> arm -> {metric: mean_ci, collapses, paired differences to grpo}; plus τ matching ε's per-step KL.
    Summaries are recomputed from each run's stored series, so a changed definition needs no re-run."""
    runs = [{**r, "summary": summarise_run(r)} for r in runs]
    out = {}
    for regime in sorted({r["regime"] for r in runs}):
        by_arm = {a: {r["seed"]: r for r in runs if r["regime"] == regime and r["arm"] == a} for a in ARMS}
        by_arm = {a: v for a, v in by_arm.items() if v}
        table = {}
        for arm, seeds in by_arm.items():
            stats = {key: mean_ci([seeds[s]["summary"][key] for s in sorted(seeds)]) for _, key in ROWS}
            stats["heldout_before"] = mean_ci([seeds[s]["summary"]["heldout_before"] for s in sorted(seeds)])
            stats["collapses"] = sum(seeds[s]["summary"]["collapsed"] for s in seeds)
            stats["never_learned"] = sum(seeds[s]["summary"]["learned_at"] is None for s in seeds)
            stats["nonfinite_steps"] = sum(seeds[s]["summary"]["nonfinite_steps"] for s in seeds)
            stats["seeds"] = sorted(seeds)
            if arm != "grpo" and "grpo" in by_arm:
                common = sorted(set(seeds) & set(by_arm["grpo"]))
                stats["vs_grpo"] = {
                    key: paired_diff_ci(
                        [seeds[s]["summary"][key] for s in common],
                        [by_arm["grpo"][s]["summary"][key] for s in common],
                    )
                    for key in PAIRED_KEYS
                }
            table[arm] = stats
        out[regime] = {
            "arms": table,
            "tau_matching_grpo": {
                key: tau_matching_grpo(table, key) for key in ("step_kl_early", "abs_log_ratio_mean")
            },
            "tau_matching_grpo_per_seed": {
                key: tau_matching_grpo_per_seed(by_arm, key) for key in ("step_kl_early", "abs_log_ratio_mean")
            },
        }
    return out


def _crossing(points: list[tuple[float, float]], target: float) -> float | None:
    """τ at which a measure, given at sorted (τ, value) points, equals `target`, by log-log interpolation between the
    first bracketing pair; None when no pair brackets it."""
    for (t0, k0), (t1, k1) in zip(points, points[1:]):
        if min(k0, k1) <= target <= max(k0, k1) and k0 != k1 and min(k0, k1, target) > 0:
            w = (math.log(target) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    return None


def tau_matching_grpo(table: dict, key: str) -> float | None:
    """τ_pos at which SAPO's mean `key` (a per-step policy-change measure) equals GRPO's (ε = 0.2), over the arm means;
    None when no pair of SAPO arms brackets it."""
    if "grpo" not in table or table["grpo"][key]["mean"] is None:
        return None
    points = sorted((ARMS[a]["sapo_tau_pos"], t[key]["mean"]) for a, t in table.items() if a != "grpo")
    return _crossing(points, table["grpo"][key]["mean"])


def tau_matching_grpo_per_seed(by_arm: dict, key: str) -> dict:
    """The same crossing seed by seed (each seed's SAPO arms against the same seed's GRPO run): {seed: τ or None},
    the range over the seeds that cross, and the paired difference GRPO − the tightest τ."""
    sapo_arms = sorted((a for a in by_arm if a != "grpo"), key=lambda a: ARMS[a]["sapo_tau_pos"])
    if "grpo" not in by_arm or len(sapo_arms) < 2:
        return {}
    seeds = sorted(set(by_arm["grpo"]).intersection(*(by_arm[a] for a in sapo_arms)))
    per_seed = {}
    for seed in seeds:
        points = [(ARMS[a]["sapo_tau_pos"], by_arm[a][seed]["summary"][key]) for a in sapo_arms]
        per_seed[seed] = _crossing(points, by_arm["grpo"][seed]["summary"][key])
    crossed = sorted(t for t in per_seed.values() if t is not None)
    tightest = sapo_arms[-1]
    return {
        "per_seed": per_seed,
        "range": [crossed[0], crossed[-1]] if crossed else None,
        "median": statistics.median(crossed) if crossed else None,
        "never_cross": len(seeds) - len(crossed),
        "tau_tried": [ARMS[sapo_arms[0]]["sapo_tau_pos"], ARMS[tightest]["sapo_tau_pos"]],
        "grpo_minus_tightest": paired_diff_ci(
            [by_arm["grpo"][s]["summary"][key] for s in seeds], [by_arm[tightest][s]["summary"][key] for s in seeds]
        ),
    }


def tau_match_sentence(tau_of_means: float | None, block: dict, key: str) -> str:
    """The τ-ε match in words: the per-seed range first (the mean-curve crossing alone hides the seed spread)."""
    per_seed = block.get("tau_matching_grpo_per_seed", {}).get(key)
    of_means = "no pair of arm means brackets it" if tau_of_means is None else f"τ ≈ {tau_of_means:.2g}"
    if not per_seed:
        return f"{of_means} (log-log interpolation between the arm means)."
    n, never = len(per_seed["per_seed"]), per_seed["never_cross"]
    lo, hi = per_seed["tau_tried"]
    if per_seed["range"] and n - never == 1:
        spread = (
            f"τ ≈ {per_seed['range'][0]:.2g} on the one seed of {n} that crosses between τ {lo:g} and {hi:g} "
            f"({never} never do)"
        )
    elif per_seed["range"]:
        spread = (
            f"per seed τ ≈ {per_seed['range'][0]:.2g}-{per_seed['range'][1]:.2g} (median {per_seed['median']:.2g}) on "
            f"the {n - never} of {n} seeds that cross between τ {lo:g} and {hi:g} ({never} never do)"
        )
    else:
        spread = f"no seed crosses between τ {lo:g} and {hi:g}"
    diff = per_seed["grpo_minus_tightest"]
    separable = diff["ci95"] is not None and abs(diff["mean"]) > diff["ci95"]
    return (
        f"{spread}; between the arm means {of_means}. GRPO − τ {hi:g}, paired: {diff['mean']:+.2g} ± "
        f"{diff['ci95']:.2g} ({'separable' if separable else 'not separable'})."
    )


def _fmt(ms: dict, digits: int = 3) -> str:
    if ms["mean"] is None:
        return "n/a"
    ci = "" if ms["ci95"] is None else f" ± {ms['ci95']:.{digits}g}"
    return f"{ms['mean']:.{digits}g}{ci}"


def _fmt_diff(d: dict) -> str:
    if d["mean"] is None:
        return "n/a"
    ci = "" if d["ci95"] is None else f" ± {d['ci95']:.2g}"
    return f"{d['mean']:+.3g}{ci} ({d['wins']}/{d['n']} seeds higher)"


def _mean_of(values: list) -> float | None:
    finite = [v for v in values if _finite(v)]
    return statistics.fmean(finite) if finite else None


def per_seed_lines(runs: list[dict], regime: str) -> list[str]:
    """One row per (seed, arm): held-out before/after, training reward over the first and last quarter of the steps,
    KL to the start, entropy, the objective's own diagnostics (gsm8k runs) and collapse."""
    lines = [
        "\nPer run (reward: mean over the first / last quarter of the steps; gate / clip: mean over steps):\n",
        "| seed | arm | held-out before | after | reward first → last quarter | KL(π_θ‖π_0) end | entropy, 2nd half "
        "| SAPO gate mean / soft-clipped share | GRPO clipped share | collapsed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted((r for r in runs if r["regime"] == regime), key=lambda r: (r["seed"], r["arm"])):
        summary, rewards = summarise_run(run), [x for x in run["series"]["reward"] if x is not None]
        quarter = max(1, len(rewards) // 4)
        extra = run.get("extra_series", {})
        gate, soft = _mean_of(extra.get("sapo_gate_mean", [])), _mean_of(extra.get("sapo_soft_clip_ratio", []))
        clip = _mean_of(extra.get("clip_ratio", []))
        lines.append(
            f"| {run['seed']} | {run['arm']} | {summary['heldout_before']:.3f} | {summary['heldout_after']:.3f} | "
            f"{statistics.fmean(rewards[:quarter]):.3f} → {statistics.fmean(rewards[-quarter:]):.3f} | "
            f"{summary['kl_to_init_final']:.3g} | {summary['entropy_final']:.3f} | "
            + (f"{gate:.3f} / {soft:.3f}" if gate is not None else "")
            + f" | {'' if clip is None else f'{clip:.3f}'} | {'yes' if summary['collapsed'] else 'no'} |"
        )
    return lines


def markdown(result: dict, args, runs: list[dict] | None = None) -> str:
    lines = [f"# Learning study: SAPO vs GRPO clipping (task `{args.task}`)\n"]
    for regime, block in result["regimes"].items():
        table = block["arms"]
        arms = list(table)
        setting = ", ".join(f"{k}={v}" for k, v in regime_settings(args, regime).items())
        recorded = [r["settings"] for r in runs or () if r["regime"] == regime and "settings" in r]
        if recorded:  # what the trainer got, in TRL's own units (one setting per regime: write_report checks)
            setting = ", ".join(f"{k}={v}" for k, v in recorded[0].items())
        lines += [
            f"\n## Regime `{regime}` ({setting}; {args.batch_size} completions per step, "
            f"{args.num_generations} per prompt)\n",
            "Mean ± 95 % t-interval over seeds.\n",
            f"| metric | {' | '.join(arms)} |",
            f"|---|{'---|' * len(arms)}",
            f"| Held-out score before training | {' | '.join(_fmt(table[a]['heldout_before']) for a in arms)} |",
        ]
        hidden = frozenset() if args.task in COPY_TASKS else COPY_ONLY_KEYS
        for label, key in ROWS:
            if key not in hidden:
                lines.append(f"| {label} | {' | '.join(_fmt(table[a][key]) for a in arms)} |")
        for label, key in (
            ("Collapses (learned, then lost half the reward; or non-finite)", "collapses"),
            ("Runs that never reached 0.8 training reward", "never_learned"),
            ("Non-finite steps (all seeds)", "nonfinite_steps"),
        ):
            if key not in hidden:
                lines.append(f"| {label} | {' | '.join(str(table[a][key]) for a in arms)} |")
        lines.append(f"| Seeds | {' | '.join(str(len(table[a]['seeds'])) for a in arms)} |")
        paired = [a for a in arms if "vs_grpo" in table[a]]
        if paired:
            lines += [
                "\nPaired per-seed difference arm − grpo (mean ± 95 % t-interval; seeds where the arm is higher):\n",
                f"| metric | {' | '.join(paired)} |",
                f"|---|{'---|' * len(paired)}",
            ]
            for key in PAIRED_KEYS:
                lines.append(f"| {key} | {' | '.join(_fmt_diff(table[a]['vs_grpo'][key]) for a in paired)} |")
        if sum(a != "grpo" for a in arms) >= 2:  # a τ sweep; one SAPO arm (gsm8k) leaves nothing to interpolate
            for key, tau in block["tau_matching_grpo"].items():
                lines.append(f"\nτ_pos whose `{key}` equals GRPO's (ε = 0.2): {tau_match_sentence(tau, block, key)}")
        if args.task == "gsm8k" and runs:
            lines += per_seed_lines(runs, regime)
    return "\n".join(lines) + "\n"


LOG_PANELS = ("ratio_max", "step_kl", "kl_to_init")


def make_plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({r["regime"] for r in runs})
    # copy runs are 150-300 steps; gsm8k runs 16-32, where 10 steps would smooth away most of the curve
    smooth = 10 if all(r["task"] in COPY_TASKS for r in runs) else 4
    panels = (("reward", "training reward"), ("kl_to_init", "KL(π_θ‖π_0)"), ("entropy", "entropy"),
              ("step_kl", "per-step KL"), ("ratio_max", "max ratio r"))  # fmt: skip
    fig, axes = plt.subplots(len(regimes), len(panels), figsize=(4 * len(panels), 3.2 * len(regimes)), squeeze=False)
    for row, regime in zip(axes, regimes):
        for ax, (key, label) in zip(row, panels):
            for arm in ARMS:
                curves = [
                    moving_average(r["series"][key], smooth) for r in runs if r["regime"] == regime and r["arm"] == arm
                ]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                length = min(map(len, curves))
                stats = [mean_ci([c[i] for c in curves]) for i in range(length)]
                mean = [s["mean"] for s in stats]
                half = [s["ci95"] or 0.0 for s in stats]
                steps = range(1, length + 1)
                ax.plot(steps, mean, label=f"{arm} (n={len(curves)})", lw=1.4)
                log_scale = key in LOG_PANELS  # keep the band's lower edge positive on a log axis
                lower = [max(m - h, m / 10) if log_scale else m - h for m, h in zip(mean, half)]
                ax.fill_between(steps, lower, [m + h for m, h in zip(mean, half)], alpha=0.15)
            ax.set_title(f"{regime}: {label}", fontsize=10)
            ax.set_xlabel("optimizer step")
            if key in LOG_PANELS:
                ax.set_yscale("log")
        row[0].legend(fontsize=7)
    fig.suptitle(title + f" — mean over seeds, 95 % CI band, {smooth}-step moving average")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _round(x: float | None) -> float | None:
    """4 significant digits: the per-step series in the results JSON, at a fraction of the size."""
    return None if x is None else float(f"{x:.4g}")


def check_one_setting_per_regime(runs: list[dict]) -> None:
    """Refuse to pool runs of one regime that the trainer ran with different settings (e.g. the demo recipe was
    edited while a study was under way): their paired differences would compare different experiments."""
    for regime in sorted({r["regime"] for r in runs}):
        recorded = {(r["arm"], r["seed"]): r["settings"] for r in runs if r["regime"] == regime and "settings" in r}
        first = next(iter(recorded.values()), None)
        differing = {run: s for run, s in recorded.items() if s != first}
        if differing:
            keys = sorted({k for s in differing.values() for k in {*s, *first} if s.get(k) != first.get(k)})
            raise SystemExit(
                f"regime {regime!r}: runs {sorted(differing)} were trained with other settings than the rest "
                f"(differing: {keys}); finish them with one recipe or move them out of the output folder"
            )


def write_report(args, runs: list[dict]) -> dict:
    check_one_setting_per_regime(runs)
    result = {"task": args.task, "config": vars(args), "regimes": aggregate(runs), "torch": torch.__version__}
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"learning_{args.task}" + ("-smoke" if args.smoke else "")
    compact = [{**r, "series": {k: [_round(x) for x in v] for k, v in r["series"].items()}} for r in runs]
    (results_dir / f"{stem}.json").write_text(json.dumps({**result, "runs": compact}))
    text = markdown(result, args, runs)
    make_plot(runs, results_dir / f"{stem}.png", f"SAPO vs GRPO, task {args.task}")
    text += f"\n![learning curves]({stem}.png)\n"
    (results_dir / f"{stem}.md").write_text(text)
    print(text)
    return result


# --------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="copy", choices=list(TASKS))
    p.add_argument(
        "--arms",
        nargs="+",
        default=None,
        choices=list(ARMS),
        help="default: grpo and SAPO at τ 1, 2, 4, 8 (copy); grpo sapo (gsm8k)",
    )
    p.add_argument("--regimes", nargs="+", default=None, help="default: every regime of the task")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0-9")
    p.add_argument("--max_steps", type=int, default=None, help="override every regime's step count")
    p.add_argument("--learning_rate", type=float, default=None, help="override every regime's learning rate")
    p.add_argument(
        "--batch_size", type=int, default=None, help="completions per step; default 32 (copy), the recipe's"
    )
    p.add_argument("--num_generations", type=int, default=None, help="default 8 (copy), the demo recipe's (gsm8k)")
    p.add_argument("--eval_examples", type=int, default=None, help="held-out problems; default 200 (copy), 128")
    p.add_argument("--num_probe", type=int, default=None, help="probe sequences for the KL metrics")
    p.add_argument("--model", default=None, help="gsm8k: HF folder or Hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--dataset",
        default=None,
        help="gsm8k: training data, e.g. ../shared/data/gsm8k or openai/gsm8k; "
        "held-out = its test split (default: the demo recipe's synthetic problems and held-out mix)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="gsm8k: cuda trains in bf16 autocast")
    p.add_argument("--max_completion_length", type=int, default=None, help="gsm8k: default the demo recipe's (96)")
    p.add_argument("--eval_max_new_tokens", type=int, default=None, help="gsm8k: default --max_completion_length")
    p.add_argument("--eval_batch_size", type=int, default=32, help="gsm8k: held-out problems per generate call")
    p.add_argument(
        "--use_vllm",
        default="false",
        choices=["true", "false"],
        help="gsm8k, cuda: generate rollouts with vLLM colocated on the GPU",
    )
    p.add_argument("--save_steps", type=int, default=2, help="gsm8k: checkpoint interval (for resuming)")
    p.add_argument("--output_dir", default=None, help="per-run folders (default benchmarks/out/learning_<task>)")
    p.add_argument("--results_dir", default=None, help="default: docs/results (with --smoke: --output_dir)")
    p.add_argument("--report_only", action="store_true", help="no training: report the finished runs")
    p.add_argument("--smoke", action="store_true", help="copy task, 2 arms, 1 seed, 12 steps: a pipeline check")
    args = p.parse_args(argv)
    args.chosen = {k: getattr(args, k) for k in ("regimes", "arms", "seeds") if getattr(args, k) is not None}
    args.seeds = args.seeds or list(range(10))
    if args.smoke and args.task not in COPY_TASKS:
        p.error("--smoke runs the copy task (copy or copy-async)")
    copy = args.task in COPY_TASKS
    args.use_vllm = args.use_vllm == "true"
    gsm8k_only = {"--dataset": args.dataset, "--model": args.model, "--max_completion_length": args.max_completion_length,
                  "--eval_max_new_tokens": args.eval_max_new_tokens, "--use_vllm": args.use_vllm or None,
                  "--device cuda": args.device == "cuda" or None}  # fmt: skip
    if copy and (given := [k for k, v in gsm8k_only.items() if v is not None]):
        p.error(f"{', '.join(given)}: gsm8k task only (add --task gsm8k)")
    if args.device == "cuda" and not (args.report_only or torch.cuda.is_available()):
        p.error("--device cuda: torch sees no CUDA device")
    if args.use_vllm and args.device != "cuda":
        p.error("--use_vllm true needs --device cuda")
    if not copy:
        args.max_completion_length = args.max_completion_length or demo_recipe()["max_completion_length"]
        args.eval_max_new_tokens = args.eval_max_new_tokens or args.max_completion_length
    if args.smoke:
        args.seeds, args.max_steps = args.seeds[:1], 12
        args.regimes = ["lag2"] if args.task == "copy-async" else ["base"]
        args.arms = args.arms or ["grpo", "sapo"]
        args.eval_examples, args.num_probe = 16, 4
    args.arms = args.arms or (list(MAIN_ARMS) if args.task == "copy" else ["grpo", "sapo"])
    args.regimes = args.regimes or list(REGIMES[args.task])
    if unknown := set(args.regimes) - set(REGIMES[args.task]):
        p.error(f"unknown regime(s) {sorted(unknown)} for task {args.task}; choose from {list(REGIMES[args.task])}")
    recipe = {} if copy else demo_recipe()
    args.gradient_accumulation_steps = 1 if copy else recipe.get("gradient_accumulation_steps", 1)
    recipe_batch = None if copy else recipe["per_device_train_batch_size"] * args.gradient_accumulation_steps
    args.batch_size = args.batch_size or (32 if copy else recipe_batch)
    args.num_generations = args.num_generations or (8 if copy else recipe["num_generations"])
    args.eval_examples = args.eval_examples or (200 if copy else 128)
    args.num_probe = args.num_probe or (64 if copy else 4)
    if args.batch_size % args.num_generations:
        p.error("--batch_size must be a multiple of --num_generations")
    if args.batch_size % args.gradient_accumulation_steps:
        p.error(
            f"--batch_size must be a multiple of the recipe's {args.gradient_accumulation_steps} accumulation steps"
        )
    suffix = "-smoke" if args.smoke else ""
    args.output_dir = args.output_dir or f"benchmarks/out/learning_{args.task}{suffix}"
    args.results_dir = args.results_dir or (args.output_dir if args.smoke else "docs/results")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    plan = [(regime, arm, seed) for regime in args.regimes for seed in args.seeds for arm in args.arms]
    runs = []
    for regime, arm, seed in tqdm(plan, desc=f"learning study ({args.task})", unit="run"):
        done = Path(args.output_dir) / regime / f"{arm}-seed{seed}" / "done.json"
        if args.report_only:
            if done.exists():
                runs.append(json.loads(done.read_text()))
            continue
        if (run := run_one(args, regime, arm, seed)) is not None:
            runs.append(run)
    if not runs and args.report_only:
        committed = Path(args.results_dir) / f"learning_{args.task}.json"
        if not committed.exists():
            raise SystemExit(f"no finished runs under {args.output_dir} and no {committed} to redraw the report from")
        print(f"no finished runs under {args.output_dir}: redrawing the report from the committed {committed}")
        chosen = lambda run: all(run[key[:-1]] in values for key, values in args.chosen.items())  # noqa: E731
        runs = [run for run in json.loads(committed.read_text())["runs"] if chosen(run)]
    if not runs:
        raise SystemExit(f"no finished runs under {args.output_dir} for {args.regimes} x {args.arms} x {args.seeds}")
    return write_report(args, [drop_stale_step_kl(run) for run in runs])


def drop_stale_step_kl(run: dict) -> dict:
    """Runs resumed before ProbeKLCallback.on_train_begin existed logged KL(π_t‖π_0) as the first step's per-step KL
    after the resume; that step's value is dropped (None) in every resumed run, so old and new records agree."""
    if not run.get("resumed_from"):
        return run
    step = int(run["resumed_from"].rsplit("-", 1)[1])  # checkpoint-K: series index K is the first step after it
    step_kl = list(run["series"]["step_kl"])
    if step < len(step_kl):
        step_kl[step] = None
    return {**run, "series": {**run["series"], "step_kl": step_kl}}


if __name__ == "__main__":
    main()
