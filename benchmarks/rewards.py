"""Per-completion time of ``trl_sapo.gsm8k.rewards.accuracy_reward`` vs TRL's ``trl.rewards.accuracy_reward``.

Two sets of completions, each reward called on one completion at a time:

- **realistic**: SmolLM2-135M-Instruct's own samples (T = 0.8) on GSM8K test questions and on the demo's synthetic
  problems, generated once by ``benchmarks/_reward_completions.py`` and cached in ``benchmarks/out/`` (``--generate``
  makes them when the cache is missing). The agreement rate of the two rewards is measured here.
- **adversarial**: degenerate model output (long digit runs, power towers, nested LaTeX, 200 000-character texts,
  control characters and lone surrogates), each with a reference whose right reward is known.

Each (reward, thread) pair runs in its own subprocess: ``main`` calls the reward in that process's main thread,
``worker`` from a ``ThreadPoolExecutor`` thread (as TRL's async reward loop and thread pools do; math_verify's
signal-based timeouts do not work there). The time of one call is measured inside the subprocess
(``time.perf_counter``); the parent kills a subprocess that has not answered within ``--timeout`` seconds (sympy can
run for hours in C code), records a timeout, and starts a fresh one for the next completion. Rewards: ours gets
the GSM8K ``answer`` column (as in training), TRL's gets the reference number as ``solution``.

    python -m benchmarks.rewards --generate                 # first run: ~1 000 completions (CPU: tens of minutes)
    python -m benchmarks.rewards                            # -> docs/results/rewards.json + rewards.md
    python -m benchmarks.rewards --smoke --output /tmp/rewards.json   # seconds; what tests run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = REPO_ROOT / "benchmarks" / "out" / "reward_completions.jsonl"
IMPLEMENTATIONS = ("trl_sapo", "trl")
THREADS = ("main", "worker")
ADVERSARIAL_CHARS = 200_000


# ---------------------------------------------------------------------------------------------------------------------
# Subprocess side: one reward, one thread mode; requests {"text", "answer", "solution"} -> {"reward", "seconds"}
# ---------------------------------------------------------------------------------------------------------------------


def _reward_function(implementation: str):
    if implementation == "trl_sapo":
        from trl_sapo.gsm8k.rewards import accuracy_reward, start_math_verify_worker

        start_math_verify_worker()
        return lambda row: accuracy_reward([row["text"]], answer=[row["answer"]])[0]
    import logging

    from trl.rewards import accuracy_reward as trl_accuracy_reward

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # "timeout ..." warnings on every call
    return lambda row: trl_accuracy_reward([[{"role": "assistant", "content": row["text"]}]], [row["solution"]])[0]


def serve(implementation: str, thread: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints go to stderr
    reward = _reward_function(implementation)

    def timed(row):
        start = time.perf_counter()
        value = reward(row)
        return value, time.perf_counter() - start

    pool = ThreadPoolExecutor(1) if thread == "worker" else None
    call = (lambda row: pool.submit(timed, row).result()) if pool else timed
    for _ in range(3):  # warm-up: imports, the math_verify subprocess, sympy caches
        call({"text": "\\boxed{\\frac{1}{3}}", "answer": "#### 0.333333", "solution": "0.333333"})
    replies.write('{"ready": true}\n')
    replies.flush()
    for line in sys.stdin:
        value, seconds = call(json.loads(line))
        replies.write(json.dumps({"reward": value, "seconds": seconds}) + "\n")
        replies.flush()


# ---------------------------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------------------------


class RewardProcess:
    """A ``serve`` subprocess, restarted after a timeout."""

    def __init__(self, implementation: str, thread: str, startup_timeout: float = 600.0):
        self.args = [sys.executable, __file__, "--serve", implementation, thread]
        self.startup_timeout = startup_timeout
        self.proc = None

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        if self._read(self.startup_timeout) != {"ready": True}:
            raise RuntimeError(f"{' '.join(self.args)} did not start")

    def _read(self, timeout: float) -> dict | None:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()  # the subprocess writes whole lines at once
        return json.loads(line) if line else None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, row: dict, timeout: float) -> dict:
        """``{"reward", "seconds"}``, or ``{"reward": None, "seconds": timeout, "timeout": True}``."""
        if self.proc is None:
            self._start()
        self.proc.stdin.write(json.dumps(row) + "\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if reply is None:
            self.close()
            return {"reward": None, "seconds": timeout, "timeout": True}
        return reply


def time_set(rows: list[dict], implementation: str, thread: str, timeout: float) -> list[dict]:
    process = RewardProcess(implementation, thread)
    try:
        return [process.run(row, timeout) for row in rows]
    finally:
        process.close()


def summarize(results: list[dict]) -> dict:
    seconds = sorted(r["seconds"] for r in results)
    n = len(seconds)
    return {
        "n": n,
        "median_ms": 1000 * statistics.median(seconds),
        "p99_ms": 1000 * seconds[min(n - 1, int(0.99 * n))],
        "max_ms": 1000 * seconds[-1],
        "mean_ms": 1000 * statistics.fmean(seconds),
        "timeouts": sum(bool(r.get("timeout")) for r in results),
        "mean_reward": statistics.fmean(r["reward"] or 0.0 for r in results),
    }


def group_digits(run: str, separator: str) -> str:
    head = len(run) % 3 or 3
    return separator.join([run[:head]] + [run[i : i + 3] for i in range(head, len(run), 3)])


def adversarial_set(chars: int) -> list[dict]:
    """Degenerate completions of up to ``chars`` characters; ``expected``: the right reward for the reference."""
    rng = random.Random(0)
    half = chars // 2
    filler_pieces = ["12 apples ", "(", ")", "{", "}", "^", "**", "\\frac{1}{", "\\sqrt{", "1,000", "999999", "$", "-"]
    filler = "".join(rng.choice(filler_pieces) for _ in range(chars // 4))[: chars - 20]
    noise = "".join(rng.choice(["\x00", "\x1b[31m", "\ud800", "\udfff", "\u200b", "\x7f", "\u2028", " "]) for _ in range(chars // 3))  # fmt: skip
    cases = [
        ("digit run 30k", "#### " + "9" * min(30_000, chars), "9" * min(30_000, chars), 1.0),
        (
            "digit run, thousands commas",
            "#### " + group_digits("9" * (chars * 3 // 4), ","),
            "9" * (chars * 3 // 4),
            1.0,
        ),  # fmt: skip
        ("1 + 5000 zeros (int str limit)", "#### 1" + "0" * 5000, "1" + "0" * 5000, 1.0),
        ("tower 2**2**2**2**2**2", "#### 2**2**2**2**2**2", "16", 0.0),
        ("tower 2^2^2^2^2^2", "#### 2^2^2^2^2^2", "16", 0.0),
        ("tower LaTeX 9^{9^{9^{9}}}", "\\boxed{9^{9^{9^{9}}}}", "9", 0.0),
        ("400 nested \\frac", "\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "}", "1", 0.0),
        ("300 nested \\sqrt", "\\boxed{" + "\\sqrt{" * 300 + "16" + "}" * 300 + "}", "16", 0.0),
        ("integral", "\\boxed{\\int_0^\\infty e^{-x^2} dx}", "1", 0.0),
        ("nested braces", "\\boxed{" + "{" * (half - 10) + "7" + "}" * (half - 10) + "}", "7", 1.0),
        ("nested parentheses", "#### " + "(" * (half - 10) + "7" + ")" * (half - 10), "7", 1.0),
        ("unclosed \\boxed{ x 28k", "\\boxed{" * (chars // 7), "5", 0.0),
        ("blank run", "#### 5" + " " * (chars - 10) + "x", "5", 1.0),
        ("filler, answer at end", filler + "\n#### 42", "42", 1.0),
        ("filler, answer at start", "#### 42\n" + filler.replace("#", ""), "42", 1.0),
        ("control chars + lone surrogates", noise + "\n#### 42" + noise.replace("\n", ""), "42", 1.0),
        ("Arabic-Indic digits", "#### " + "\u0664\u0662", "42", 1.0),
    ]
    return [
        {"name": name, "text": text, "answer": f"#### {ref}", "solution": ref, "expected": expected}
        for name, text, ref, expected in cases
    ]


def realistic_set(paths: list[Path], limit: int | None) -> list[dict]:
    from benchmarks._reward_completions import load
    from trl_sapo.gsm8k.rewards import reference_answer

    rows = [row for path in paths for row in load(path)][:limit]
    return [
        {
            "text": r["completion"],
            "answer": r["answer"],
            "solution": reference_answer(r["answer"]),
            "source": r["source"],
        }
        for r in rows
    ]


def smoke_set() -> list[dict]:
    """Hand-written completions in the shapes the model writes (no model needed): for --smoke."""
    texts = [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("The answer is 12 dollars.", "12"),
        ("He pays 5 * 3 = 15 dollars. So the answer is 15", "16"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("Total: 1,250 + 250 = 1,500 people", "1500"),
        ("I am not sure.", "3"),
    ]
    return [{"text": t, "answer": f"#### {ref}", "solution": ref, "source": "smoke"} for t, ref in texts]


def agreement(ours: list[dict], theirs: list[dict]) -> dict:
    pairs = [(a["reward"], b["reward"]) for a, b in zip(ours, theirs) if not a.get("timeout") and not b.get("timeout")]
    as_bool = [(bool(a), bool(b)) for a, b in pairs]  # TRL's None (unparseable gold) counts as 0
    return {
        "n": len(pairs),
        "rate": sum(a == b for a, b in as_bool) / max(1, len(pairs)),
        "both_correct": sum(a and b for a, b in as_bool),
        "only_trl_sapo": sum(a and not b for a, b in as_bool),
        "only_trl": sum(b and not a for a, b in as_bool),
        "both_wrong": sum(not a and not b for a, b in as_bool),
        "trl_none": sum(b is None for _, b in pairs),
    }


def disagreement_examples(rows, ours, theirs, k: int = 6) -> list[dict]:
    out = []
    for row, a, b in zip(rows, ours, theirs):
        if bool(a["reward"]) != bool(b["reward"]) and len(out) < k:
            out.append({"completion_tail": row["text"][-160:], "reference": row["solution"], "trl_sapo": a["reward"], "trl": b["reward"]})  # fmt: skip
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Reward time per completion: trl_sapo vs TRL `accuracy_reward`",
        "",
        f"Generated by `benchmarks/rewards.py` from `{result['json_name']}`. {result['machine']}. One completion per "
        f"call; time measured inside the reward's own process; a call not done within {result['args']['timeout']} s "
        "is killed and counted as a timeout (its time is then that limit).",
        "",
        f"Command: `{result.get('command', 'python -m benchmarks.rewards')}`",
        "",
        "Realistic set: SmolLM2-135M-Instruct samples (T = 0.8, at most 96 new tokens, the project's system prompt; "
        "`benchmarks/_reward_completions.py`) per source: "
        + ", ".join(f"{k} {v}" for k, v in result["sets"]["realistic"].get("sources", {}).items())
        + ". TRL's reward gets the reference number as `solution`, ours the GSM8K `answer` column.",
        "",
        "| set | reward | thread | n | median ms | p99 ms | max ms | timeouts | mean reward |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for set_name, block in result["sets"].items():
        for key, stats in block["timing"].items():
            implementation, thread = key.split("/")
            name = {"trl_sapo": "trl_sapo", "trl": "TRL"}[implementation]
            lines.append(
                f"| {set_name} | {name} | {thread} | {stats['n']} | {stats['median_ms']:.2f} | {stats['p99_ms']:.2f} "
                f"| {stats['max_ms']:.1f} | {stats['timeouts']} | {stats['mean_reward']:.3f} |"
            )
    lines += ["", "## Summary", ""]
    for line in result["summary_lines"]:
        lines.append(f"- {line}")
    adversarial = result["sets"].get("adversarial")
    if adversarial:
        lines += ["", "## Adversarial completions (ms per call; `timeout` = killed)", ""]
        header = " | ".join(adversarial["timing"])
        lines += [f"| case | chars | expected | {header} | rewards |", "|---|---:|---:|" + "---:|" * len(adversarial["timing"]) + "---|"]  # fmt: skip
        for case in adversarial["cases"]:
            cells = " | ".join("timeout" if t is None else f"{t:.1f}" for t in case["ms"].values())
            rewards = ", ".join(f"{k}={v}" for k, v in case["rewards"].items())
            lines.append(f"| {case['name']} | {case['chars']} | {case['expected']} | {cells} | {rewards} |")
    realistic = result["sets"].get("realistic")
    if realistic and realistic.get("disagreements"):
        lines += ["", "## Realistic completions where the two rewards disagree (first few)", ""]
        for d in realistic["disagreements"]:
            tail = d["completion_tail"].replace("\n", "\\n").replace("|", "\\|")
            lines.append(f"- reference {d['reference']}: trl_sapo {d['trl_sapo']}, TRL {d['trl']}: `…{tail}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=2, metavar=("IMPLEMENTATION", "THREAD"), help=argparse.SUPPRESS)
    parser.add_argument("--completions", nargs="+", default=[str(COMPLETIONS)], help="cached completions (JSON lines)")
    parser.add_argument("--generate", action="store_true", help="sample the realistic completions when not cached")
    parser.add_argument("--num_realistic", type=int, default=None, help="use the first N cached completions")
    parser.add_argument("--adversarial_chars", type=int, default=ADVERSARIAL_CHARS)
    parser.add_argument("--timeout", type=float, default=20.0, help="hard limit per call (s); TRL allows itself 15")
    parser.add_argument(
        "--smoke", action="store_true", help="hand-written completions, 2 000-char adversarial set, 3 s limit"
    )
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "results" / "rewards.json"))
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return {}
    if args.smoke:
        realistic, args.adversarial_chars, args.timeout = smoke_set(), 2000, min(args.timeout, 3.0)
    else:
        paths = [Path(p) for p in args.completions]
        if paths == [COMPLETIONS] and not COMPLETIONS.exists():
            if not args.generate:
                parser.error(
                    f"{COMPLETIONS} not found: run with --generate once (samples SmolLM2-135M-Instruct on CPU)"
                )
            from benchmarks._reward_completions import generate

            generate(COMPLETIONS, str(REPO_ROOT / "models" / "SmolLM2-135M-Instruct"), str(REPO_ROOT.parent / "shared" / "data" / "gsm8k"), 500, 2, 96, 50)  # fmt: skip
        realistic = realistic_set(paths, args.num_realistic)
    sets = {"realistic": realistic, "adversarial": adversarial_set(args.adversarial_chars)}
    command = " ".join(["python -m benchmarks.rewards", *(sys.argv[1:] if argv is None else argv)])
    result: dict = {"args": vars(args), "command": command, "sets": {}}
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"  # fmt: skip
    result["json_name"] = Path(args.output).name
    for set_name, rows in sets.items():
        runs = {}
        for implementation in IMPLEMENTATIONS:
            for thread in THREADS:
                start = time.time()
                runs[f"{implementation}/{thread}"] = time_set(rows, implementation, thread, args.timeout)
                print(f"{set_name} {implementation}/{thread}: {len(rows)} completions in {time.time() - start:.0f} s", flush=True)  # fmt: skip
        block: dict = {"timing": {key: summarize(r) for key, r in runs.items()}}
        block["agreement_main_thread"] = agreement(runs["trl_sapo/main"], runs["trl/main"])
        block["trl_sapo_thread_consistency"] = all(
            a["reward"] == b["reward"] for a, b in zip(runs["trl_sapo/main"], runs["trl_sapo/worker"])
        )
        if set_name == "realistic":
            block["disagreements"] = disagreement_examples(rows, runs["trl_sapo/main"], runs["trl/main"])
            block["sources"] = {s: sum(r.get("source") == s for r in rows) for s in sorted({r.get("source") for r in rows})}  # fmt: skip
        else:
            block["cases"] = [
                {
                    "name": row["name"],
                    "chars": len(row["text"]),
                    "expected": row["expected"],
                    "ms": {k: None if r[i].get("timeout") else 1000 * r[i]["seconds"] for k, r in runs.items()},
                    "rewards": {k: r[i]["reward"] for k, r in runs.items()},
                }
                for i, row in enumerate(rows)
            ]
            block["trl_sapo_right_value"] = all(
                runs["trl_sapo/main"][i]["reward"] == row["expected"] for i, row in enumerate(rows)
            )
        result["sets"][set_name] = block
    result["summary_lines"] = summary_lines(result)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    output.with_suffix(".md").write_text(table)
    print(table)
    return result


def summary_lines(result: dict) -> list[str]:
    real, adv = result["sets"]["realistic"]["timing"], result["sets"]["adversarial"]["timing"]
    agree = result["sets"]["realistic"]["agreement_main_thread"]
    lines = []
    for thread in THREADS:
        ours, trl = real[f"trl_sapo/{thread}"], real[f"trl/{thread}"]
        lines.append(
            f"realistic, {thread} thread: trl_sapo median {ours['median_ms']:.2f} ms vs TRL {trl['median_ms']:.2f} ms "
            f"({trl['median_ms'] / ours['median_ms']:.1f}x faster; mean {trl['mean_ms'] / ours['mean_ms']:.1f}x)"
        )
    lines.append(
        f"realistic agreement (main thread, TRL's None = 0): {agree['rate']:.3f} of {agree['n']} "
        f"(both correct {agree['both_correct']}, only trl_sapo {agree['only_trl_sapo']}, only TRL {agree['only_trl']})"
    )
    for thread in THREADS:
        ours, trl = adv[f"trl_sapo/{thread}"], adv[f"trl/{thread}"]
        lines.append(
            f"adversarial, {thread} thread: trl_sapo worst {ours['max_ms']:.1f} ms ({ours['timeouts']} timeouts); "
            f"TRL worst {trl['max_ms']:.0f} ms, {trl['timeouts']} of {trl['n']} killed at the {result['args']['timeout']:.0f} s limit"
        )
    lines.append(
        "trl_sapo gives the known right reward on every adversarial case: "
        f"{result['sets']['adversarial'].get('trl_sapo_right_value')}; same rewards in main and worker threads: "
        f"{all(b['trl_sapo_thread_consistency'] for b in result['sets'].values())}"
    )
    return lines


if __name__ == "__main__":
    main()
