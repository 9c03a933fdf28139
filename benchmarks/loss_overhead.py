"""Cost of SAPOTrainer's loss vs TRL's own: time of compute_loss + backward and its peak memory, same model/batches.

Three variants on the same model, the same prepared batch and real off-policy ratios:

    sapo      SAPOTrainer (trl_sapo's gate: float32, exact overflow-free backward, sapo/* diagnostics)
    trl_sapo  GRPOTrainer(loss_type="sapo")  (TRL's built-in gate, naive autograd)
    trl_grpo  GRPOTrainer(loss_type="grpo")  (clipped surrogate, the usual baseline)

The inputs dict is what `GRPOTrainer._compute_loss` reads after generation (prompt/completion ids and masks,
advantages, `old_per_token_logps`, `num_items_in_batch`), built by hand: no generation, no rewards. Old log-probs are
the current ones plus Gaussian noise (σ = `--logratio_std`, default 0.1: |log r| of a few % typical, ~5 % of tokens
outside GRPO's [0.8, 1.2]), so the gate and the clipping actually act.

Timing: repeats interleaved ABC BCA CAB … (start rotated each repeat), after warm-up; medians, IQR and min.
On CPU the ratios use the process CPU time of each call (use --threads 1): on a shared machine, wall time mostly
measures the scheduler; the wall-clock numbers are kept in the JSON too. On CUDA they use wall time after
torch.cuda.synchronize().
Memory (separate, untimed pass, because tracking slows things):
    cuda: torch.cuda.max_memory_allocated() during compute_loss + backward, minus the allocation before it.
    cpu:  peak live tensor bytes from `torch.distributed._tools.mem_tracker.MemTracker` (a dispatch-mode tracker of
          every tensor storage, CPU included), minus parameters and buffers; plus the bytes autograd saves for
          backward (`saved_tensors_hooks`, storages de-duplicated).

A second part times the policy-loss math alone (log-probs leaf → scalar loss → backward) at large B×T, where the
model does not drown the difference: `trl_sapo.loss.sapo_per_token_loss` + `aggregate` vs TRL's formula.

    python -m benchmarks.loss_overhead --smoke                      # < 60 s, tiny model
    python -m benchmarks.loss_overhead --output docs/results/loss_overhead.json
    python -m benchmarks.loss_overhead --device cuda --model random-1b --lengths 1024 4096 --batch_size 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from trl_sapo.tools.offline import use_offline_mode

use_offline_mode()  # before transformers/datasets are imported

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from benchmarks import proto_gate  # noqa: E402
from tools.models import random_llama  # noqa: E402
from trl_sapo import SAPOConfig, SAPOTrainer  # noqa: E402
from trl_sapo import loss as sapo_loss  # noqa: E402

VARIANTS = ("sapo", "trl_sapo", "trl_grpo")
RATIOS = (("sapo", "trl_sapo"), ("sapo", "trl_grpo"), ("sapo_proto", "trl_sapo"), ("sapo_proto", "sapo"))


# --------------------------------------------------------------------------------------------------------------------
# Models and trainers
# --------------------------------------------------------------------------------------------------------------------
def load_model(name: str, device: str, seed: int = 0):
    """'tiny' (2-layer random Llama, SmolLM2's vocabulary), 'micro' (same, 2k vocabulary), 'smollm2' (SmolLM2-135M-Instruct), 'random-1b' (GPU), or an HF folder."""
    torch.manual_seed(seed)
    if name in ("tiny", "micro"):  # micro: same but a 2k vocabulary, for the smoke run
        vocab_size = 49152 if name == "tiny" else 2048
        model = random_llama(vocab_size, hidden_size=64, intermediate_size=128, max_position_embeddings=8192)
    elif name == "random-1b":  # Llama-3.2-1B shapes, random weights: a realistic GPU-sized model without the Hub
        model = random_llama(
            128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
        )
    else:
        if name == "smollm2":
            from tools.models import prepare_smollm2

            name = str(prepare_smollm2())
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    return model.to(device).train()


def build_trainers(model, device: str, output_dir: str) -> dict:
    """The three trainers around one shared model (compute_loss only: no generation, no optimizer)."""
    common = dict(
        output_dir=output_dir,
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        report_to="none",
        per_device_train_batch_size=2,
        num_generations=2,
        num_iterations=2,  # off-policy: GRPOTrainer reads old_per_token_logps
        beta=0.0,
        logging_steps=1,
    )
    from transformers import AutoTokenizer

    from tools.models import prepare_smollm2

    tokenizer = AutoTokenizer.from_pretrained(prepare_smollm2())  # only needed by the constructors
    dummy = Dataset.from_dict({"prompt": ["x"] * 4})
    reward = [lambda completions, **kw: [0.0] * len(completions)]  # never called
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainers = {
            "sapo": SAPOTrainer(
                model, reward, args=SAPOConfig(**common), train_dataset=dummy, processing_class=tokenizer
            ),
            **{
                f"trl_{loss_type}": GRPOTrainer(
                    model,
                    reward,
                    args=GRPOConfig(loss_type=loss_type, **common),
                    train_dataset=dummy,
                    processing_class=tokenizer,
                )
                for loss_type in ("sapo", "grpo")
            },
        }
    for trainer in trainers.values():
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop otherwise
    return trainers


def make_inputs(model, batch_size: int, prompt_len: int, completion_len: int, logratio_std: float, seed: int) -> dict:
    """A GRPO training micro-batch as `_compute_loss` receives it, with real off-policy old log-probs."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    prompt_ids = torch.randint(3, vocab, (batch_size, prompt_len), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    for i in range(batch_size):  # left padding of varying length
        prompt_mask[i, : int(torch.randint(0, prompt_len // 4 + 1, (1,), generator=g))] = 0
    completion_ids = torch.randint(3, vocab, (batch_size, completion_len), generator=g)
    # completions end at different lengths (half of them run to the limit), as after EOS masking
    lengths = torch.where(
        torch.rand(batch_size, generator=g) < 0.5,
        torch.full((batch_size,), completion_len),
        torch.randint(completion_len // 4, completion_len + 1, (batch_size,), generator=g),
    )
    completion_mask = (torch.arange(completion_len)[None, :] < lengths[:, None]).long()
    advantages = torch.randn(batch_size, generator=g)
    advantages = advantages - advantages.mean()
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs


def add_old_logps(trainer, model, inputs: dict, logratio_std: float, seed: int) -> None:
    """old = current log-probs + N(0, σ²) noise on completion tokens (the behaviour policy a few updates ago)."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, inputs["completion_ids"].size(1)
        )
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(logps.shape, generator=g).to(logps.device) * logratio_std
    inputs["old_per_token_logps"] = (logps.float() + noise).detach()


# --------------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(trainer, model, inputs) -> None:
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    trainer._metrics["train"].clear()  # metrics lists would otherwise grow over repeats


def proto_step(trainer, model, inputs) -> None:
    with proto_gate.patched():
        step(trainer, model, inputs)


def time_interleaved(fns: dict, repeats: int, warmup: int, device: str) -> dict[str, dict[str, list[float]]]:
    """Seconds per call, repeats interleaved ABC BCA CAB … so drift and load spikes hit every variant alike.

    Returns {name: {"wall": [...], "cpu": [...]}}: wall-clock (after cuda synchronize) and this process's CPU time.
    On a shared CPU the CPU time is the robust measure of the work done (it leaves out time spent descheduled).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            times[name]["wall"].append(time.perf_counter() - t0)
            times[name]["cpu"].append(time.process_time() - c0)
    return times


def timing_summary(t: dict[str, list[float]], device: str) -> dict:
    """time_s: the clock the ratios use (CPU time on cpu, wall time on cuda); wall_s and cpu_s: both clocks."""
    primary = "wall" if device == "cuda" else "cpu"
    return {
        "time_s": summary(t[primary]),
        "clock": f"{primary} (process CPU time)" if primary == "cpu" else "wall",
        "wall_s": summary(t["wall"]),
        "cpu_s": summary(t["cpu"]),
    }


def saved_tensor_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while running fn (storages counted once)."""
    storages: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        storages[(st.data_ptr(), t.device.type)] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_memory(fn, model, device: str) -> dict:
    """Peak bytes above the model's parameters/buffers while running fn (see module docstring for the method)."""
    if device == "cuda":
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "method": "torch.cuda.max_memory_allocated"}
    from torch.distributed._tools.mem_tracker import MemTracker

    model.zero_grad(set_to_none=True)
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        fn()
    peak = tracker.get_tracker_snapshot("peak")
    per_device = peak.get(torch.device("cpu"), next(iter(peak.values())))
    static = per_device.get("Parameter", 0) + per_device.get("Buffer", 0)
    return {
        "peak_bytes": per_device["Total"] - static,
        "peak_breakdown": {k: v for k, v in per_device.items() if v},
        "method": "torch.distributed._tools.mem_tracker.MemTracker (peak live tensor bytes - params - buffers)",
    }


def summary(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "iqr": q[2] - q[0], "min": min(xs), "n": len(xs)}


def ratios(result: dict, key: str) -> dict:
    return {f"{a}/{b}": result[a][key] / result[b][key] for a, b in RATIOS if a in result and result[b][key]}


# --------------------------------------------------------------------------------------------------------------------
# Isolated loss math
# --------------------------------------------------------------------------------------------------------------------
def trl_sapo_formula(logps, old, adv, mask, tau_pos=1.0, tau_neg=1.05):
    """GRPOTrainer._compute_loss, loss_type='sapo', token level, beta=0 (trl 1.16), incl. its aggregation."""
    adv = adv.unsqueeze(1)
    coef_1 = torch.exp(logps - old)
    temperatures = torch.where(adv > 0, tau_pos, tau_neg)
    per_token_loss = -(torch.sigmoid(temperatures * (coef_1 - 1)) * 4 / temperatures) * adv
    return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def trl_grpo_formula(logps, old, adv, mask, eps=0.2):
    adv = adv.unsqueeze(1)
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def ours_formula(logps, old, adv, mask):
    terms = sapo_loss.sapo_per_token_loss(logps, old, adv, mask, 1.0, 1.05)
    return sapo_loss.aggregate(terms.per_token_loss, mask, "grpo")


def proto_formula(logps, old, adv, mask):
    with proto_gate.patched():
        return ours_formula(logps, old, adv, mask)


def isolated_loss_math(
    batch_size: int, length: int, repeats: int, warmup: int, device: str, std: float, proto: bool
) -> dict:
    g = torch.Generator().manual_seed(0)
    logps0 = (-torch.rand(batch_size, length, generator=g) * 5).to(device)
    old = (logps0 + torch.randn(batch_size, length, generator=g).to(device) * std).detach()
    adv = torch.randn(batch_size, generator=g).to(device)
    lengths = torch.randint(length // 4, length + 1, (batch_size,), generator=g).to(device)
    mask = (torch.arange(length, device=device)[None, :] < lengths[:, None]).long()
    formulas = {"sapo": ours_formula, "trl_sapo": trl_sapo_formula, "trl_grpo": trl_grpo_formula}
    if proto:
        formulas["sapo_proto"] = proto_formula

    def run(formula):
        logps = logps0.clone().requires_grad_(True)
        loss = formula(logps, old, adv, mask)
        with proto_gate.patched() if formula is proto_formula else contextlib.nullcontext():
            loss.backward()  # the gate's backward looks gradient_weight up at call time

    times = time_interleaved({k: (lambda f=f: run(f)) for k, f in formulas.items()}, repeats, warmup, device)
    out = {}
    for name, formula in formulas.items():
        logps = logps0.clone().requires_grad_(True)
        saved = saved_tensor_bytes(lambda: formula(logps, old, adv, mask))  # noqa: B023
        out[name] = {**timing_summary(times[name], device), "saved_tensor_bytes": saved}
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run(formula)
            torch.cuda.synchronize()
            out[name]["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    out["batch_size"], out["length"] = batch_size, length
    flat = {k: {"t": v["time_s"]["median"], "m": v["saved_tensor_bytes"]} for k, v in out.items() if k in formulas}
    out["time_ratio"] = ratios(flat, "t")
    out["saved_bytes_ratio"] = ratios(flat, "m")
    return out


# --------------------------------------------------------------------------------------------------------------------
def machine_info(device: str) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    with contextlib.suppress(Exception):
        import transformers
        import trl

        info["trl"], info["transformers"] = trl.__version__, transformers.__version__
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", nargs="+", default=["tiny", "smollm2"], help="'tiny', 'smollm2', 'random-1b' (GPU) or HF folders"
    )
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 1024], help="completion lengths (tokens)")
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument(
        "--batch_sizes",
        nargs="+",
        type=int,
        default=None,
        help="one batch size per --lengths entry (default: --batch_size for all)",
    )
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--logratio_std", type=float, default=0.1)
    p.add_argument(
        "--isolated",
        nargs=2,
        type=int,
        default=[64, 4096],
        metavar=("B", "T"),
        help="B×T of the isolated loss-math timing (0 0 to skip)",
    )
    p.add_argument("--isolated_repeats", type=int, default=30)
    p.add_argument(
        "--proto",
        action="store_true",
        help="also measure benchmarks/proto_gate.py's cheaper gradient weight (variant sapo_proto)",
    )
    p.add_argument("--proto_trainer", action="store_true", help="also time sapo_proto at trainer level")
    p.add_argument("--no_memory", action="store_true", help="skip the (slow, untimed) memory pass")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--output", default="benchmarks/out/loss_overhead.json")
    p.add_argument("--table", metavar="JSON", help="only print the markdown tables of a results JSON")
    p.add_argument("--smoke", action="store_true", help="< 60 s: tiny model, short lengths, few repeats")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.lengths, args.batch_size, args.prompt_len = ["micro"], [32, 64], 2, 16
        args.repeats, args.warmup, args.isolated, args.isolated_repeats = 3, 1, [8, 256], 5
        args.batch_sizes, args.threads = None, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    args.batch_sizes = args.batch_sizes or [args.batch_size] * len(args.lengths)
    if len(args.batch_sizes) != len(args.lengths):
        p.error("--batch_sizes needs one value per --lengths entry")
    return args


def bench_case(args, model, trainers: dict, batch_size: int, length: int) -> dict:
    """Time and memory of every variant on one prepared batch (B = batch_size, T = length)."""
    inputs = make_inputs(model, batch_size, args.prompt_len, length, args.logratio_std, seed=length)
    add_old_logps(trainers["trl_grpo"], model, inputs, args.logratio_std, seed=length)

    def make_fn(name: str):
        if name == "sapo_proto":
            return lambda: proto_step(trainers["sapo"], model, inputs)
        return lambda: step(trainers[name], model, inputs)

    names = [*VARIANTS, "sapo_proto"] if args.proto_trainer else list(VARIANTS)
    fns = {name: make_fn(name) for name in names}
    times = time_interleaved(fns, args.repeats, args.warmup, args.device)
    entry = {"batch_size": batch_size, "prompt_len": args.prompt_len, "completion_len": length}
    for name in names:
        entry[name] = timing_summary(times[name], args.device)
        if args.no_memory:
            continue
        trainer = trainers[name.removesuffix("_proto")]
        with proto_gate.patched() if name == "sapo_proto" else contextlib.nullcontext():
            entry[name]["memory"] = peak_memory(fns[name], model, args.device)
            entry[name]["saved_tensor_bytes"] = saved_tensor_bytes(lambda: trainer.compute_loss(model, inputs))  # noqa: B023
        trainer._metrics["train"].clear()
    entry["time_ratio"] = ratios({n: {"t": entry[n]["time_s"]["median"]} for n in names}, "t")
    if not args.no_memory:
        flat = {n: {"m": entry[n]["memory"]["peak_bytes"], "s": entry[n]["saved_tensor_bytes"]} for n in names}
        entry["memory_ratio"] = ratios(flat, "m")
        entry["saved_bytes_ratio"] = ratios(flat, "s")
    return entry


def bench_model(args, model_name: str, tmp_dir: str):
    """Yields one entry per (length, batch size) for this model."""
    model = load_model(model_name, args.device)
    trainers = build_trainers(model, args.device, tmp_dir)
    n_params = sum(p.numel() for p in model.parameters())
    for length, batch_size in zip(args.lengths, args.batch_sizes):
        entry = {"model": model_name, "params": n_params, **bench_case(args, model, trainers, batch_size, length)}
        print(format_row(entry), flush=True)
        yield entry


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print(format_table(result))
        return result
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "machine": machine_info(args.device), "trainer": [], "isolated": None}
    for model_name in args.models:
        for entry in bench_model(args, model_name, tempfile.mkdtemp(prefix="loss_overhead_")):
            result["trainer"].append(entry)
            out_path.write_text(json.dumps(result, indent=1))  # partial results survive an interrupted run
    if args.isolated[0] > 0:
        result["isolated"] = isolated_loss_math(
            *args.isolated, args.isolated_repeats, args.warmup, args.device, args.logratio_std, args.proto
        )
        add_estimates(result)
    out_path.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    print(f"wrote {out_path}")
    return result


def add_estimates(result: dict) -> None:
    """Trainer-level time ratio implied by the isolated loss-math cost, scaled to each entry's B×T tokens.

    On a shared CPU the trainer-level medians carry noise far above the loss's share of a step, so this is the
    sharper estimate: (t_trl_sapo + Δt_loss(B×T)) / t_trl_sapo, with Δt_loss = per-token (sapo − trl_sapo) cost.
    """
    iso = result["isolated"]
    iso_tokens = iso["batch_size"] * iso["length"]
    for e in result["trainer"]:
        tokens = e["batch_size"] * e["completion_len"]
        base = e["trl_sapo"]["time_s"]["median"]
        est = {}
        for name in ("sapo", "sapo_proto"):
            if name in iso:
                delta = (iso[name]["time_s"]["median"] - iso["trl_sapo"]["time_s"]["median"]) * tokens / iso_tokens
                est[f"{name}/trl_sapo"] = (base + delta) / base
        e["estimated_time_ratio_from_isolated"] = est


def mib(x: int) -> str:
    return f"{x / 2**20:.1f}"


def format_row(e: dict) -> str:
    t = " ".join(f"{n}={e[n]['time_s']['median'] * 1e3:.1f}ms" for n in [*VARIANTS, "sapo_proto"] if n in e)
    mem = e.get("memory_ratio", {})
    return f"[{e['model']} B={e['batch_size']} T={e['completion_len']}] {t} time ratios={e['time_ratio']} mem ratios={mem}"


def _peak_method(result: dict) -> str:
    for e in result["trainer"]:
        if "memory" in e["sapo"]:
            return e["sapo"]["memory"]["method"]
    return "not measured"


def format_table(result: dict) -> str:
    """Markdown tables: trainer-level (time, peak memory) and isolated loss math."""
    clock = "CPU-time" if result["args"]["device"] == "cpu" else "wall"
    lines = [
        f"Times: median {clock} ms per compute_loss + backward (IQR). Peak: {_peak_method(result)}.",
        "",
        "| model | B×T | SAPOTrainer ms | TRL sapo ms | TRL grpo ms | time SAPO/TRL-sapo | time SAPO/TRL-grpo "
        "| peak MiB SAPO / TRL-sapo / TRL-grpo | mem SAPO/TRL-sapo | mem SAPO/TRL-grpo |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["trainer"]:
        t = [f"{e[n]['time_s']['median'] * 1e3:.1f} (IQR {e[n]['time_s']['iqr'] * 1e3:.1f})" for n in VARIANTS]
        tr = e["time_ratio"]
        if "memory_ratio" in e:
            mem = " / ".join(mib(e[n]["memory"]["peak_bytes"]) for n in VARIANTS)
            mr = e["memory_ratio"]
            mem_cols = f"{mem} | {mr['sapo/trl_sapo']:.3f} | {mr['sapo/trl_grpo']:.3f}"
        else:
            mem_cols = "n/a | n/a | n/a"
        lines.append(
            f"| {e['model']} ({e['params'] / 1e6:.0f}M) | {e['batch_size']}×{e['completion_len']} | {' | '.join(t)} "
            f"| {tr['sapo/trl_sapo']:.3f} | {tr['sapo/trl_grpo']:.3f} | {mem_cols} |"
        )
    est = [e for e in result["trainer"] if e.get("estimated_time_ratio_from_isolated")]
    if est:
        lines += ["", "Time ratio vs TRL-sapo implied by the isolated loss-math cost (see `add_estimates`):", ""]
        for e in est:
            r = e["estimated_time_ratio_from_isolated"]
            lines.append(
                f"- {e['model']} {e['batch_size']}×{e['completion_len']}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in r.items())
            )
    protos = [e for e in result["trainer"] if "sapo_proto" in e]
    if protos:
        lines += ["", "Prototype `benchmarks/proto_gate.py` (SAPOTrainer with τ kept at (B, 1)):", ""]
        for e in protos:
            mem = f", peak MiB {mib(e['sapo_proto']['memory']['peak_bytes'])}" if "memory" in e["sapo_proto"] else ""
            lines.append(
                f"- {e['model']} {e['batch_size']}×{e['completion_len']}: "
                f"{e['sapo_proto']['time_s']['median'] * 1e3:.1f} ms{mem}; time ratios "
                + ", ".join(f"{k} {v:.3f}" for k, v in e["time_ratio"].items() if k.startswith("sapo_proto"))
            )
    iso = result.get("isolated")
    if iso:
        lines += [
            "",
            f"Isolated policy-loss math (log-probs leaf → loss → backward), B×T = {iso['batch_size']}×{iso['length']}, "
            f"{clock} ms:",
            "",
            "| variant | median ms (IQR) | autograd saved MiB |",
            "|---|---|---|",
        ]
        for n in [*VARIANTS, "sapo_proto"]:
            if n not in iso:
                continue
            v = iso[n]
            lines.append(
                f"| {n} | {v['time_s']['median'] * 1e3:.2f} ({v['time_s']['iqr'] * 1e3:.2f}) "
                f"| {mib(v['saved_tensor_bytes'])} |"
            )
        lines.append(
            f"\nratios: time {json.dumps({k: round(x, 3) for k, x in iso['time_ratio'].items()})}, "
            f"saved bytes {json.dumps({k: round(x, 3) for k, x in iso['saved_bytes_ratio'].items()})}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
