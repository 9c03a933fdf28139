"""`make gpu-check`: every GPU path of trl-sapo in one short run on one CUDA GPU (at most ~8 minutes), PASS / FAIL /
SKIP per path with the error, printed as a table and written as JSON (default docs/results/gpu_check.json).

Checks, in order (each one small function registered in CHECKS; one failing does not stop the others):

  bf16-generate  the Qwen2.5-0.5B recipe (recipes/qwen2.5-0.5b-instruct_sapo.yaml) through scripts/gsm8k_sapo.py on
                 synthetic GSM8K problems: a few optimizer steps in bf16 with transformers generation, a checkpoint,
                 then the same command again resumes it for one more step; finite losses and sapo/* metrics
  bf16-vllm      the same with vLLM colocated (SKIP when vllm is not installed)
  lora           the same with the LoRA recipe (recipes/qwen2.5-0.5b-instruct_sapo_lora.yaml)
  zero2          the same under `accelerate launch` with DeepSpeed ZeRO-2 in one process
  throughput     SAPOTrainer vs GRPOTrainer(loss_type="sapo") on the same batches: tokens/s and peak GPU memory
  loss-overhead  benchmarks/loss_overhead.py in a short form on CUDA (random 1B model, 1024-token completions)
  async          AsyncSAPOTrainer through the GSM8K entry point and the async recipe
                 (recipes/qwen2.5-0.5b-instruct_sapo_async.yaml, transformers rollout worker): a few steps

The model is --model when it can be loaded (local folder or Hub cache); otherwise, e.g. on a machine without
network, a random model of Qwen2.5-0.5B's shape (tokenizer from --tokenizer: it tests throughput and the code
paths, not learning). Each check runs in its own processes with a timeout; checks not started within --budget_s are
reported SKIP. Without CUDA it exits with status 2 before doing anything. Exit status: 0 no FAIL, 1 some FAIL.

    make gpu-check                                       # python -m scripts.gpu_check, with the .gpu/ wheels if any
    python -m scripts.gpu_check --only bf16-generate throughput --output /tmp/gpu_check.json
    python -m scripts.gpu_check --list
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scripts.gpu_check_children import CHILD_CHECKS, run_child_check

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "results" / "gpu_check.json"
DEFAULT_TOKENIZER = REPO_ROOT / ".gpu" / "tokenizer"  # written by `make gpu-wheels` (SmolLM2's tokenizer files)
FALLBACK_TOKENIZER = REPO_ROOT / "models" / "SmolLM2-135M-Instruct"
# Qwen/Qwen2.5-0.5B-Instruct's config.json (architecture fields only): the random stand-in's shape.
QWEN25_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    vocab_size=151936, hidden_act="silu",
)  # fmt: skip


class Skip(Exception):
    """Raised by a check that does not apply here (reported SKIP with the message)."""


@dataclass
class Context:
    """What every check gets: where to write, the model folder, how many steps, the per-check timeout (s)."""

    work_dir: Path
    model_dir: Path
    steps: int = 2
    timeout_s: float = 240.0
    env: dict = field(default_factory=dict)
    deadline: float = math.inf  # time.monotonic() after which a running command is stopped


@dataclass
class Check:
    name: str
    description: str
    func: Callable[[Context], dict]


CHECKS: dict[str, Check] = {}


def check(name: str, description: str):
    """Register `func(ctx) -> details` as a check: it raises to FAIL, raises Skip to SKIP, returns a dict to PASS."""

    def register(func):
        CHECKS[name] = Check(name, description, func)
        return func

    return register


# ---- runner and report ----------------------------------------------------------------------------------------------


def run_checks(checks: list[Check], ctx: Context, budget_s: float, clock=time.monotonic) -> list[dict]:
    """Run each check in turn; a failure is recorded with its error and the next check runs."""
    start, results = clock(), []
    for item in checks:
        began = clock()
        result = {"name": item.name, "status": "PASS", "seconds": 0.0, "details": {}, "error": None}
        if began - start > budget_s:
            result.update(status="SKIP", error=f"time budget ({budget_s:.0f} s) spent before this check started")
        else:
            print(f"[RUN] {item.name}: {item.description}", flush=True)
            try:
                result["details"] = item.func(ctx) or {}
            except Skip as skip:
                result.update(status="SKIP", error=str(skip))
            except Exception as err:  # the check failed: record it, run the next one
                tail = "".join(traceback.format_exception(err)[-3:]).strip()
                result.update(status="FAIL", error=f"{type(err).__name__}: {err}"[:2000], traceback=tail[-2000:])
            result["seconds"] = round(clock() - began, 1)
        print(f"[{result['status']}] {item.name} ({result['seconds']:.0f} s){': ' + result['error'] if result['error'] else ''}",
              flush=True)  # fmt: skip
        results.append(result)
    return results


def _summary(details: dict) -> str:
    """One short line of a check's key numbers for the table."""
    parts = []
    for key, value in details.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, (int, str)) and len(str(value)) <= 40:
            parts.append(f"{key} {value}")
    return "; ".join(parts)[:160]


def format_table(results: list[dict]) -> str:
    """Markdown table: check | status | seconds | key numbers, or the error."""
    lines = ["| check | status | s | result |", "| --- | --- | ---: | --- |"]
    for r in results:
        text = (r["error"] or "") if r["status"] != "PASS" else _summary(r["details"])
        text = text.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | {text[:200]} |")
    return "\n".join(lines)


def write_report(path: Path, results: list[dict], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")


# ---- shared steps of the checks -------------------------------------------------------------------------------------


def run_command(ctx: Context, command: list[str], log_name: str) -> str:
    """Run a command from the repository root with the check's environment and timeout; its output goes to a log
    file in the work folder; a non-zero exit raises with the log's tail."""
    log = ctx.work_dir / f"{log_name}.log"
    timeout = max(1.0, min(ctx.timeout_s, ctx.deadline - time.monotonic()))
    with open(log, "w") as out:  # own session: a timeout kills the launcher's workers too, freeing the GPU
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=ctx.env or None, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(command[:6])} ...; log {log}:\n{text[-1500:]}")
    return text


def recipe_command(ctx: Context, name: str, recipe: str, max_steps: int, launcher=(), extra=()) -> list[str]:
    """scripts/gsm8k_sapo.py with `recipe`, sized down to a few quick steps on synthetic problems."""
    return [
        *(launcher or [sys.executable]), "scripts/gsm8k_sapo.py", "--config", recipe,
        "--model_name_or_path", str(ctx.model_dir), "--dataset_name", "synthetic", "--num_eval_examples", "16",
        "--output_dir", str(ctx.work_dir / name), "--max_steps", str(max_steps), "--eval_strategy", "no",
        "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--steps_per_generation", "2",
        "--num_generations", "8", "--max_completion_length", "64", "--save_steps", str(ctx.steps),
        "--logging_steps", "1", "--log_completions", "false", "--report_to", "none", "--use_vllm", "false", *extra,
    ]  # fmt: skip


def check_training_log(state: dict, expect_sapo: bool = True) -> dict:
    """Finite losses and, for SAPO, the sapo/* metrics in a trainer_state.json's log history."""
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    if not logs:
        raise AssertionError("no training loss was logged")
    losses = [entry["loss"] for entry in logs]
    if not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"non-finite loss: {losses}")
    sapo = sorted({key for entry in logs for key in entry if key.startswith("sapo/")})
    if expect_sapo and not sapo:
        raise AssertionError("no sapo/* metrics were logged")
    return {"losses": losses, "sapo_metrics": sapo, "global_step": state["global_step"]}


def train_and_resume(ctx: Context, name: str, recipe: str, launcher=(), extra=()) -> dict:
    """Train `ctx.steps` steps (a checkpoint at the last), then run the same command for one more step: it must
    resume from that checkpoint (not start over) and log finite losses and sapo/* metrics."""
    run_command(ctx, recipe_command(ctx, name, recipe, ctx.steps, launcher, extra), f"{name}-train")
    output_dir = ctx.work_dir / name
    saved = output_dir / f"checkpoint-{ctx.steps}" / "trainer_state.json"
    if not saved.exists():
        raise AssertionError(f"no checkpoint-{ctx.steps} in {output_dir}")
    saved_at = saved.stat().st_mtime_ns
    run_command(ctx, recipe_command(ctx, name, recipe, ctx.steps + 1, launcher, extra), f"{name}-resume")
    if not saved.exists() or saved.stat().st_mtime_ns != saved_at:  # a run that started over saves it again
        raise AssertionError(f"the second run did not resume from checkpoint-{ctx.steps} (it was rewritten)")
    details = check_training_log(json.loads((output_dir / "trainer_state.json").read_text()))
    if details["global_step"] != ctx.steps + 1:
        raise AssertionError(f"resumed run ended at step {details['global_step']}, expected {ctx.steps + 1}")
    return {"final_loss": details["losses"][-1], "sapo_metrics": len(details["sapo_metrics"]),
            "resumed_to_step": details["global_step"]}  # fmt: skip


def run_child(ctx: Context, name: str) -> dict:
    """Run an in-process check (`--child NAME`) in a fresh Python process: a CUDA error or leaked memory stays there."""
    out = ctx.work_dir / f"{name}.json"
    command = [sys.executable, "-m", "scripts.gpu_check", "--child", name, "--model", str(ctx.model_dir),
               "--work_dir", str(ctx.work_dir), "--steps", str(ctx.steps)]  # fmt: skip
    run_command(ctx, command, name)
    return json.loads(out.read_text())


# ---- the checks -----------------------------------------------------------------------------------------------------

QWEN_RECIPE = "recipes/qwen2.5-0.5b-instruct_sapo.yaml"
LORA_RECIPE = "recipes/qwen2.5-0.5b-instruct_sapo_lora.yaml"
GRACE_S = 60.0  # after --budget_s no check starts; GRACE_S later a running command is stopped


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@check("bf16-generate", "Qwen2.5-0.5B recipe, bf16, transformers generation: train, checkpoint, resume")
def check_bf16_generate(ctx: Context) -> dict:
    return train_and_resume(ctx, "bf16-generate", QWEN_RECIPE)


@check("bf16-vllm", "the same with vLLM colocated")
def check_bf16_vllm(ctx: Context) -> dict:
    if not installed("vllm"):
        raise Skip("vllm is not installed (pip install 'trl-sapo[vllm]'; too large to carry to an offline machine)")
    return train_and_resume(ctx, "bf16-vllm", QWEN_RECIPE, extra=["--use_vllm", "true", "--vllm_mode", "colocate"])


@check("lora", "the LoRA recipe: train, checkpoint, resume")
def check_lora(ctx: Context) -> dict:
    return train_and_resume(ctx, "lora", LORA_RECIPE)


@check("zero2", "DeepSpeed ZeRO-2 in one process under accelerate launch: train, checkpoint, resume")
def check_zero2(ctx: Context) -> dict:
    if not installed("deepspeed"):
        raise AssertionError("deepspeed is not installed (make gpu-wheels carries a wheel built without ops)")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/zero2.yaml",
                "--num_processes", "1", "--main_process_port", "29517"]  # fmt: skip
    return train_and_resume(ctx, "zero2", QWEN_RECIPE, launcher=launcher)


@check("throughput", 'SAPOTrainer vs GRPOTrainer(loss_type="sapo"): tokens/s and peak GPU memory, same batches')
def check_throughput(ctx: Context) -> dict:
    return run_child(ctx, "throughput")


@check("loss-overhead", "benchmarks/loss_overhead.py, short form on CUDA")
def check_loss_overhead(ctx: Context) -> dict:
    out = ctx.work_dir / "loss_overhead.json"
    run_command(ctx, loss_overhead_command(out), "loss-overhead")
    return loss_overhead_summary(json.loads(out.read_text()))


def loss_overhead_summary(result: dict) -> dict:
    """SAPOTrainer / GRPOTrainer(loss_type="sapo") time and memory ratios from benchmarks/loss_overhead.py's JSON."""
    entry = result["trainer"][0]
    return {
        "time_ratio_vs_trl_sapo": entry["time_ratio"]["sapo/trl_sapo"],
        "memory_ratio_vs_trl_sapo": entry["memory_ratio"]["sapo/trl_sapo"],
        "isolated_time_ratio_vs_trl_sapo": result["isolated"]["time_ratio"]["sapo/trl_sapo"],
    }


def loss_overhead_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.loss_overhead", "--device", "cuda", "--models", "random-1b",
            "--lengths", "1024", "--batch_size", "4", "--repeats", "5", "--warmup", "2", "--isolated", "16", "4096",
            "--isolated_repeats", "10", "--output", str(out)]  # fmt: skip


@check("async", "AsyncSAPOTrainer via the GSM8K entry point and the async recipe, a few steps")
def check_async(ctx: Context) -> dict:
    return run_child(ctx, "async")  # an import error of the async trainer is a FAIL: the package ships it


# ---- model, command line --------------------------------------------------------------------------------------------


def prepare_model(model: str, tokenizer_dir: Path, work_dir: Path, device: str = "cuda") -> tuple[Path, str]:
    """(folder, description): `model` when it loads without the network (a folder or the Hub cache), else a random
    bf16 model of Qwen2.5-0.5B's shape with `tokenizer_dir`'s tokenizer (its vocabulary size)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if Path(model).is_dir():
        return Path(model), f"{model} (local folder)"
    try:
        from huggingface_hub import snapshot_download

        AutoConfig.from_pretrained(model, local_files_only=True)
        return Path(snapshot_download(model, local_files_only=True)), f"{model} (Hub cache)"
    except Exception as err:
        reason = f"{type(err).__name__}"
    import torch

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**{**QWEN25_05B, "vocab_size": len(tokenizer)}, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        random_model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    out = work_dir / "random-qwen2.5-0.5b"
    random_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    note = (f"random weights, Qwen2.5-0.5B shape with {tokenizer_dir.name}'s vocabulary ({len(tokenizer)}, not "
            f"151936); {model} not loadable offline ({reason})")  # fmt: skip
    return out, note


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m scripts.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", nargs="+", choices=list(CHECKS), metavar="CHECK", help="run these checks (default all)")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON report (default %(default)s)")
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="model id or folder (see above)")
    p.add_argument("--tokenizer", type=Path, default=None, help=f"tokenizer of the random model (default "
                   f"{DEFAULT_TOKENIZER.relative_to(REPO_ROOT)}, else {FALLBACK_TOKENIZER.relative_to(REPO_ROOT)})")  # fmt: skip
    p.add_argument("--steps", type=int, default=2, help="optimizer steps before the checkpoint (>= 1)")
    p.add_argument("--budget_s", type=float, default=420.0,
                   help=f"start no check after this many seconds; stop a running one {GRACE_S:.0f} s later")  # fmt: skip
    p.add_argument("--check_timeout_s", type=float, default=240.0, help="one command of a check is stopped after")
    p.add_argument("--work_dir", type=Path, default=None, help="scratch folder (default a temporary one)")
    p.add_argument("--child", choices=sorted(CHILD_CHECKS), help="internal: run one in-process check in this process")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.budget_s <= 0 or args.check_timeout_s <= 0:
        p.error("--budget_s and --check_timeout_s must be > 0")
    if args.child and args.work_dir is None:
        p.error("--child needs --work_dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(f"{c.name:<14} {c.description}" for c in CHECKS.values()))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU: torch.cuda.is_available() is False here; nothing was run.", file=sys.stderr)
        return 2
    if args.child:
        return run_child_check(args)
    from trl_sapo.tools.offline import use_offline_mode

    use_offline_mode()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = args.tokenizer or (DEFAULT_TOKENIZER if DEFAULT_TOKENIZER.is_dir() else FALLBACK_TOKENIZER)
    model_dir, model_note = prepare_model(args.model, tokenizer, work_dir)
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath}
    deadline = time.monotonic() + args.budget_s + GRACE_S  # a check started late is stopped here
    ctx = Context(work_dir, model_dir, args.steps, args.check_timeout_s, env=env, deadline=deadline)
    checks = [CHECKS[name] for name in (args.only or CHECKS)]
    results = run_checks(checks, ctx, args.budget_s)
    meta = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
        "versions": package_versions(), "model": model_note, "steps": args.steps, "work_dir": str(work_dir),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }  # fmt: skip
    write_report(args.output, results, meta)
    print(
        f"\n{meta['gpu']}, torch {meta['torch']}; model: {model_note}\n\n{format_table(results)}\n\n-> {args.output}"
    )
    return 1 if any(r["status"] == "FAIL" for r in results) else 0


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("trl", "transformers", "accelerate", "peft", "datasets", "deepspeed", "vllm", "trl-sapo"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.exit(main())
