"""The numbers in README.md and docs/results.md come from the committed JSON, never from hand copies.

Each generated block sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` markers; this script
renders every block from docs/results/*.json and writes it in place. Words that rank two arms follow the paired 95 %
interval mechanically (:func:`verdict`): an interval that excludes 0 names the arm ahead, one that does not says
"not separable". `--check` changes nothing and exits 1 when a block differs from what the JSON gives (a test runs
it, so text and data cannot drift).

    python -m benchmarks.docs_numbers            # rewrite the blocks after a study or a report change
    python -m benchmarks.docs_numbers --check    # what tests/test_docs_numbers.py runs
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from tools.stats import mean_ci, t95

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "docs" / "results"
DOCS = (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "results.md")
BLOCK_RE = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def verdict(diff: dict, arm: str, base: str = "GRPO", higher_is_better: bool = True) -> str:
    """'<arm> ahead' / '<base> ahead' when the paired 95 % interval of arm − base excludes 0, else 'not separable'
    (and 'too few seeds to rank' below 3 pairs)."""
    if diff.get("mean") is None:
        return "n/a"
    # one seed has no interval; two give a t-interval with 1 degree of freedom (or zero width by coincidence)
    if diff.get("n", 3) < 3 or diff.get("ci95") is None:
        return "too few seeds to rank"
    if abs(diff["mean"]) <= diff["ci95"]:
        return "not separable"
    arm_higher = diff["mean"] > 0
    return f"{arm if arm_higher == higher_is_better else base} ahead"


def _ms(stats: dict, digits: int = 3, signed: bool = False) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:{'+' if signed else ''}.{digits}f}" + (
        "" if stats["ci95"] is None else f" ± {stats['ci95']:.{digits}f}"
    )


def _paired(diff: dict, arm: str, higher_is_better: bool = True) -> str:
    word = verdict(diff, arm, higher_is_better=higher_is_better)
    word = f"**{word}**" if word.endswith("ahead") else word
    if diff.get("mean") is None:
        return "n/a"
    ci = "" if diff.get("ci95") is None else f" ± {diff['ci95']:.3f}"  # one seed: no interval
    return f"{diff['mean']:+.3f}{ci} ({diff['wins']}/{diff['n']}), {word}"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _study(name: str) -> tuple[dict, list[dict]] | None:
    """(aggregate by regime, runs) of a learning study JSON, summaries recomputed by benchmarks/learning.py."""
    from benchmarks import learning

    data = _load(name)
    if data is None:
        return None
    return learning.aggregate(data["runs"]), data["runs"]


# --------------------------------------------------------------------------------------------------------------------
def copy_headline() -> str:
    agg, _ = _study("learning_copy.json")
    arms = ("grpo", "sapo", "sapo-tau2", "sapo-tau4", "sapo-tau8")
    label = {"grpo": "grpo", "sapo": "sapo (τ 1)"}
    lines = [
        "| regime | metric | " + " | ".join(label.get(a, a) for a in arms) + " |",
        "|---|---|" + "---|" * len(arms),
    ]

    def paired(table: dict, key: str) -> Callable[[str], str]:
        return lambda a: "" if a == "grpo" else _paired(table[a]["vs_grpo"][key], "SAPO")

    for regime in ("base", "reuse", "stress"):
        t = agg[regime]["arms"]
        n = len(t["grpo"]["seeds"])
        cells = {
            "held-out score after": lambda a, t=t: _ms(t[a]["heldout_after"]),
            "paired, held-out score": paired(t, "heldout_after"),
            "mean training reward": lambda a, t=t: _ms(t[a]["train_reward_mean"]),
            "paired, mean training reward": paired(t, "train_reward_mean"),
            "steps until 20-step reward ≥ 0.8": lambda a, t=t: _ms(t[a]["learned_at"], 0),
            "runs that never reached 0.8 training reward": lambda a, t=t, n=n: f"{t[a]['never_learned']}/{n}",
            "per-step KL(π_t‖π_{t−1}), first 20 % of steps": lambda a, t=t: f"{t[a]['step_kl_early']['mean']:.2g}",
            "mean \\|log r\\| seen by the loss": lambda a, t=t: f"{t[a]['abs_log_ratio_mean']['mean']:.2f}",
            "entropy, second half": lambda a, t=t: f"{t[a]['entropy_final']['mean']:.2f}",
            "non-finite steps / collapses": lambda a, t=t: f"{t[a]['nonfinite_steps']} / {t[a]['collapses']}",
        }
        for metric, cell in cells.items():
            lines.append(f"| {regime} | {metric} | " + " | ".join(cell(a) for a in arms) + " |")
    return "\n".join(lines) + "\n"


def copy_tau() -> str:
    from benchmarks import learning

    agg, _ = _study("learning_copy.json")
    block = agg["base"]
    sentence = learning.tau_match_sentence(block["tau_matching_grpo"]["step_kl_early"], block, "step_kl_early")
    tau32 = block["arms"]["sapo-tau32"]
    grpo = block["arms"]["grpo"]
    return (
        f"In the `base` regime, the τ at which SAPO's early per-step KL equals GRPO's (ε = 0.2): {sentence}\n"
        f"Matching the step size does not match the learning: at τ 32 the mean training reward is "
        f"{_ms(tau32['train_reward_mean'])} vs GRPO {_ms(grpo['train_reward_mean'])} (paired "
        f"{_paired(tau32['vs_grpo']['train_reward_mean'], 'SAPO τ 32')}), held-out {_ms(tau32['heldout_after'])} vs "
        f"{_ms(grpo['heldout_after'])} (paired {_paired(tau32['vs_grpo']['heldout_after'], 'SAPO τ 32')}). "
        f"At τ 1 (the paper's default) the early per-step KL relative to GRPO's is, paired, "
        f"{_paired_small(block['arms']['sapo']['vs_grpo']['step_kl_early'])}.\n"
    )


def _paired_small(diff: dict) -> str:
    """A paired difference of a small quantity (KL), with which side is larger when the interval excludes 0."""
    side = "not separable"
    if abs(diff["mean"]) > diff["ci95"]:
        side = "**SAPO larger**" if diff["mean"] > 0 else "**GRPO larger**"
    return f"{diff['mean']:+.2g} ± {diff['ci95']:.2g} ({diff['wins']}/{diff['n']} seeds larger), {side}"


def copy_timing() -> str:
    _, runs = _study("learning_copy.json")
    seconds = [r["train_seconds"] for r in runs]
    return (
        f"({len(runs)} runs of 150-300 steps, training {min(seconds):.1f}-{max(seconds):.0f} s per run, "
        f"{sum(seconds) / 60:.0f} min in all, on one core shared with other work.)\n"
    )


def gsm8k_realism(name: str = "learning_gsm8k.json") -> str:
    """Per-seed held-out table and paired verdicts of a SmolLM2 study (`gsm8k`, or `gsm8k-async` with its JSON)."""
    study = _study(name)
    if study is None:
        return f"*No runs recorded yet (docs/results/{name} is absent).*\n"
    agg, runs = study
    lines = []
    for regime, block in agg.items():
        table = block["arms"]
        if "grpo" not in table or "sapo" not in table:
            continue
        by = {(r["arm"], r["seed"]): r for r in runs if r["regime"] == regime}
        seeds = sorted({s for a, s in by if a == "grpo"} & {s for a, s in by if a == "sapo"})
        lines += [
            f"\n**Regime `{regime}`** ({len(seeds)} paired seed{'s' * (len(seeds) != 1)}; held-out accuracy, greedy; before = the same "
            "initial model in every run):\n",
            "| seed | before | GRPO after | SAPO after | SAPO − GRPO | GRPO / SAPO mean training reward | minutes (GRPO / SAPO) |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in seeds:
            g, p = by["grpo", s], by["sapo", s]
            lines.append(
                f"| {s} | {g['summary']['heldout_before']:.3f} | {g['summary']['heldout_after']:.3f} | "
                f"{p['summary']['heldout_after']:.3f} | {p['summary']['heldout_after'] - g['summary']['heldout_after']:+.3f} | "
                f"{g['summary']['train_reward_mean']:.3f} / {p['summary']['train_reward_mean']:.3f} | "
                f"{_minutes(g)} / {_minutes(p)} |"
            )
        vs = table["sapo"]["vs_grpo"]
        change = {  # does training move the held-out score at all? after − before per seed (same initial model)
            arm: mean_ci(
                [by[arm, s]["summary"]["heldout_after"] - by[arm, s]["summary"]["heldout_before"] for s in seeds]
            )
            for arm in ("grpo", "sapo")
        }
        lines += [
            "",
            f"- held-out after training: GRPO {_ms(table['grpo']['heldout_after'])}, SAPO "
            f"{_ms(table['sapo']['heldout_after'])}; paired SAPO − GRPO {_paired(vs['heldout_after'], 'SAPO')} "
            f"(in brackets: seeds on which SAPO is higher).",
            "- change from the initial model (after − before, mean over seeds): "
            + "; ".join(f"{arm.upper()} {_ms(c, signed=True)}, {_reading(c)}" for arm, c in change.items())
            + ".",
            f"- seeds needed to resolve a paired held-out difference of this size at this spread: "
            f"{_pairs_to_resolve(vs['heldout_after'])}.",
            f"- mean training reward (sample efficiency): paired {_paired(vs['train_reward_mean'], 'SAPO')}.",
            f"- collapses (learned, then lost half the reward; or non-finite): GRPO {table['grpo']['collapses']}, "
            f"SAPO {table['sapo']['collapses']}.",
        ]
        if any(by[arm, s].get("resumed_from") for arm in ("grpo", "sapo") for s in seeds):
            lines.append("- † resumed from a checkpoint after an interruption: the minutes of the last process only.")
    return "\n".join(lines).lstrip("\n") + "\n"


def _pairs_to_resolve(diff: dict) -> str:
    """The smallest n whose 95 % t-interval, at the observed per-pair spread, would be narrower than |mean|."""
    if diff.get("ci95") is None or not diff.get("mean"):
        return "n/a"
    spread = diff["ci95"] * math.sqrt(diff["n"]) / t95(diff["n"] - 1)  # the per-pair standard deviation
    n = 3
    while t95(n - 1) * spread / math.sqrt(n) >= abs(diff["mean"]):
        n += 1
        if n > 1000:
            return "more than 1000"
    return f"≈ {n} (the study has {diff['n']})"


def _minutes(run: dict) -> str:
    return f"{run['train_seconds'] / 60:.1f}" + ("†" if run.get("resumed_from") else "")


def gsm8k_realism_status() -> str:
    """One paragraph: how many of the planned paired seeds each regime has, and what its held-out interval allows."""
    from benchmarks import learning

    study = _study("learning_gsm8k.json")
    agg, runs = study if study is not None else ({}, [])
    planned, parts, pairs = learning.PLANNED_GSM8K_SEEDS, [], {}
    for regime in learning.REGIMES["gsm8k"]:
        arms = agg.get(regime, {}).get("arms", {})
        diff = arms["sapo"]["vs_grpo"]["heldout_after"] if "sapo" in arms and "vs_grpo" in arms["sapo"] else None
        pairs[regime] = diff["n"] if diff else 0
        name = f"`{regime}`" + (" (a recipe chosen with SAPO: its home ground)" if regime == "demo" else "")
        parts.append(f"{name} {_paired(diff, 'SAPO')}" if diff else f"{name} no pair yet")
    if all(n >= planned for n in pairs.values()):
        status = f"{planned} paired seeds per regime"
    else:
        done = ", ".join(f"`{r}` {n} of {planned}" for r, n in pairs.items())
        status = f"**partial**: paired seeds {done}; the remaining runs resume with the commands in docs/results.md §2b, and this paragraph is regenerated from the JSON"
    spans = []
    for regime in learning.REGIMES["gsm8k"]:
        # a resumed run's time covers its last process only
        minutes = [r["train_seconds"] / 60 for r in runs if r["regime"] == regime and not r.get("resumed_from")]
        if minutes:
            low, high = f"{min(minutes):.1f}", f"{max(minutes):.1f}"
            spans.append(f"`{regime}` {low if low == high else f'{low}-{high}'} min")
    timing = (
        f" Training per run: {', '.join(spans)} (`OMP_NUM_THREADS=1`, the two regimes' commands side by side on 2 "
        "cores)."
        if spans
        else ""
    )
    return (
        f"SmolLM2-135M realism study ({status}): held-out accuracy after training, SAPO − GRPO paired over seeds "
        f"(seeds on which SAPO is higher): {'; '.join(parts)}.{timing}\n"
    )


def _reading(gain: dict) -> str:
    """What a mean ± 95 % interval over seeds allows one to say about the change (as `verdict`: not below 3 seeds,
    where two equal values give a zero-width interval)."""
    if gain["ci95"] is None or gain.get("n", 3) < 3:
        return "too few seeds"
    if gain["mean"] - gain["ci95"] > 0:
        return "better after training"
    if gain["mean"] + gain["ci95"] < 0:
        return "worse after training"
    return "not separable from no change"


def demo_seeds(short: bool = False) -> str:
    from benchmarks import demo_seeds as study

    data = _load("demo_seeds.json")
    if data is None:
        return "*No seed study recorded yet (docs/results/demo_seeds.json is absent).*\n"
    agg = data["aggregate"]
    gain = agg["gain"]
    ci = "" if gain["ci95"] is None else f" ± {gain['ci95']:.3f}"
    runs = data["runs"]
    threads = max(r["threads"] for r in runs)
    timed = [r["wall_time_s"] / 60 for r in runs if r["threads"] == threads]
    per_seed = ", ".join(f"{r['gain']:+.3f}" for r in runs)
    others = [
        f"seed {r['seed']}: {r['wall_time_s'] / 60:.1f} min at {r['threads']} thread{'s' * (r['threads'] != 1)}"
        for r in runs
        if r["threads"] != threads
    ]
    headline = (
        f"Over {len(runs)} training seeds run through `make demo`, the held-out gain (all 128 problems) "
        f"was min {agg['gain_min']:+.3f}, mean {gain['mean']:+.3f}{ci} (95 % t-interval over seeds), max "
        f"{agg['gain_max']:+.3f} (per seed: {per_seed}); "
        f"{min(timed):.1f}-{max(timed):.1f} min per run at {threads} threads"
        + (f" ({'; '.join(others)})" if others else "")
        + "."
    )
    if short:  # the README's first screen: what a user's run is compared with (the bar is in results.md §2c)
        lines = [headline, "",
                 "| held-out problems | n | accuracy before → after (mean over seeds) | mean gain ± 95 % CI | reading |",
                 "|---|---|---|---|---|"]  # fmt: skip
        n_by_row = data["runs"][0]["n_by_row"]
        for name, g in agg["gain_by_row"].items():
            before, after = agg["mean_accuracy_by_row"][name]
            ci = "" if g["ci95"] is None else f" ± {g['ci95']:.3f}"
            lines.append(
                f"| {name} | {n_by_row[name]} | {before:.3f} → {after:.3f} | {g['mean']:+.3f}{ci} | {_reading(g)} |"
            )
        return "\n".join(lines) + "\n"
    return headline + "\n\n" + study.markdown(data).split("\n", 2)[2]


def rewards() -> str:
    """The reward benchmark's timing table and summary (benchmarks/rewards.py's own markdown, from rewards.json)."""
    data = _load("rewards.json")
    if data is None:
        return "*No reward benchmark recorded yet (docs/results/rewards.json is absent).*\n"
    from benchmarks import rewards as reward_benchmark

    text = reward_benchmark.markdown(data)
    table = text[text.index("| set |") : text.index("\n\n", text.index("| set |"))]
    return table + "\n\n" + "\n".join(f"- {line}" for line in data["summary_lines"]) + "\n"


def demo_trials() -> str:
    """The demo recipes tried so far, one seed each (docs/results/demo_recipe_trials.json)."""
    data = _load("demo_recipe_trials.json")
    if data is None:
        return "*No recipe trials recorded.*\n"
    ops = ["same kind as training", "unseen phrasings"]
    ops += [k for k in data["runs"][0]["gain"] if k.startswith("operation ")]
    lines = [
        "| recipe | seed | held-out before → after (n = 128) | gain ± paired 95 % CI | "
        + " | ".join(f"gain, {op}" for op in ops)
        + " | training reward, first → last quarter |",
        "|---|---|---|---|" + "---|" * len(ops) + "---|",
    ]
    for run in data["runs"]:
        before, after = run["accuracy"]["all held-out problems"]
        gain, ci = run["gain"]["all held-out problems"], run["gain_ci95"]["all held-out problems"]
        training = run["training"]
        lines.append(
            f"| {run['recipe']} | {run['seed']} | {before:.3f} → {after:.3f} | {gain:+.3f} ± {ci:.3f} | "
            + " | ".join(f"{run['gain'][op]:+.3f}" for op in ops)
            + f" | {training['reward_first_quarter']:.3f} → {training['reward_last_quarter']:.3f} |"
        )
    return "\n".join(lines) + f"\n\n({data['note']}.)\n"


def _sapo_gains_from_study(regime: str) -> tuple[list[float], list[float], dict[str, list[float]], list[float]]:
    """SAPO arm of one realism-study regime: held-out accuracy before and gain per seed (all problems, each
    operation), and training minutes of the runs that were not resumed."""
    data = _load("learning_gsm8k.json")
    runs = sorted(
        (r for r in (data or {"runs": []})["runs"] if r["regime"] == regime and r["arm"] == "sapo"),
        key=lambda r: r["seed"],
    )
    befores, gains, by_op = [], [], {}
    for run in runs:
        before, after = run["eval_before"], run["eval_after"]
        befores.append(before["accuracy"])
        gains.append(after["accuracy"] - before["accuracy"])
        for op in "+-*/":
            idx = [i for i, o in enumerate(before["operations"]) if o == op]
            change = sum(after["correct"][i] for i in idx) - sum(before["correct"][i] for i in idx)
            by_op.setdefault(f"operation {op}", []).append(change / len(idx))
    minutes = [r["train_seconds"] / 60 for r in runs if not r.get("resumed_from")]
    return befores, gains, by_op, minutes


def demo_bar() -> str:
    """Every SAPO configuration measured on the demo's held-out set, against issue 17's bar: per seed, mean, worst
    operation, time. The evidence for which constraint the demo relaxes."""
    rows = []
    seeds = _load("demo_seeds.json")
    if seeds is not None:
        runs = seeds["runs"]
        ops = [k for k in runs[0]["gain_by_row"] if k.startswith("operation ")]
        threads = sorted({r["threads"] for r in runs})
        rows.append((
            "the demo recipe (r5) through `make demo`",
            [r["before"] for r in runs],
            [r["gain"] for r in runs],
            {op: [r["gain_by_row"][op] for r in runs] for op in ops},
            [r["wall_time_s"] / 60 for r in runs if r["threads"] == max(threads)],
            f"whole demo, {max(threads)} threads",
        ))  # fmt: skip
    for regime, label in (
        ("demo", "the same recipe, separate runs through `benchmarks/learning.py` (`demo` regime)"),
        ("reuse", "`reuse` regime: lr 1e-5, 32 steps, 8 updates per rollout (~2× the backward passes)"),
    ):
        befores, gains, by_op, minutes = _sapo_gains_from_study(regime)
        if gains:
            rows.append((label, befores, gains, by_op, minutes, "training only, 1 thread beside another run"))
    trials = _load("demo_recipe_trials.json")
    groups: dict[str, list[dict]] = {}
    for run in (trials or {"runs": []})["runs"]:
        groups.setdefault(run["recipe"], []).append(run)
    for label, runs in groups.items():  # screened candidates with more than one seed
        if len(runs) > 1:
            threads = sorted({r["threads"] for r in runs})
            rows.append((
                f"{label} (`scripts/demo.py --recipe`)",
                [r["accuracy"]["all held-out problems"][0] for r in runs],
                [r["gain"]["all held-out problems"] for r in runs],
                {op: [r["gain"][op] for r in runs] for op in runs[0]["gain"] if op.startswith("operation ")},
                [r["wall_time_s"]["total"] / 60 for r in runs],
                f"whole demo, {'/'.join(map(str, threads))} thread(s); load: the trial table's note",
            ))  # fmt: skip
    lines = [
        "| SAPO configuration | seeds | held-out before (the recipe's prompt) | gain per seed | min / mean ± 95 % CI "
        "/ max | seeds ≥ +0.05 | worst operation, mean gain | minutes per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, befores, gains, by_op, minutes, timing in rows:
        mean = mean_ci(gains)
        worst_op, worst = min(((op, mean_ci(v)) for op, v in by_op.items()), key=lambda kv: kv[1]["mean"])
        lines.append(
            f"| {label} | {len(gains)} | {statistics.fmean(befores):.3f} | {', '.join(f'{g:+.3f}' for g in gains)} | {min(gains):+.3f} / "
            f"{_ms(mean, signed=True)} / {max(gains):+.3f} | {sum(g >= 0.05 for g in gains)}/{len(gains)} | "
            f"{worst_op} {_ms(worst, signed=True)} | "
            f"{min(minutes):.1f}-{max(minutes):.1f} ({timing}) |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# §2d: the staleness study (copy task, AsyncSAPOTrainer at a fixed lag) and its SmolLM2 regime
COPY_ASYNC = "learning_copy-async.json"
GSM8K_ASYNC = "learning_gsm8k-async.json"


def _lags(agg: dict) -> list[str]:
    return sorted(agg, key=lambda regime: int(regime.removeprefix("lag")))


def copy_async_headline() -> str:
    """Per lag: each arm's mean ± 95 % interval and the paired SAPO − GRPO difference with its verdict."""
    study = _study(COPY_ASYNC)
    if study is None:
        return f"*No runs recorded yet (docs/results/{COPY_ASYNC} is absent).*\n"
    agg, runs = study
    lines = [
        "| lag | metric | grpo | sapo (τ 1) | paired SAPO − GRPO (seeds SAPO higher), verdict |",
        "|---|---|---|---|---|",
    ]
    for regime in _lags(agg):
        t = agg[regime]["arms"]
        vs = t["sapo"]["vs_grpo"]
        rows = (
            ("held-out score after", "heldout_after", lambda d: _paired(d, "SAPO")),
            ("mean training reward", "train_reward_mean", lambda d: _paired(d, "SAPO")),
            ("final training reward (last 20 % of steps)", "train_reward_final", lambda d: _paired(d, "SAPO")),
            ("per-step KL(π_t‖π_{t−1}), first 20 % of steps", "step_kl_early", _paired_small),
            ("mean \\|log r\\| seen by the loss", "abs_log_ratio_mean", _paired_small),
        )
        for label, key, paired in rows:
            small = key in ("step_kl_early", "abs_log_ratio_mean")  # mean only, 2 significant digits
            grpo, sapo = (f"{t[a][key]['mean']:.2g}" if small else _ms(t[a][key]) for a in ("grpo", "sapo"))
            lines.append(f"| {regime[3:]} | {label} | {grpo} | {sapo} | {paired(vs[key])} |")
        lines.append(
            f"| {regime[3:]} | max r seen by the loss (mean over seeds) | {t['grpo']['ratio_max']['mean']:.3g} | "
            f"{t['sapo']['ratio_max']['mean']:.3g} |  |"
        )
        lines.append(
            f"| {regime[3:]} | tokens clipped (GRPO) / gradient weight (SAPO), mean over steps and seeds | "
            f"{_series_mean(runs, regime, 'grpo', 'clip_ratio'):.3f} | "
            f"{_series_mean(runs, regime, 'sapo', 'sapo_grad_weight_mean'):.3f} |  |"
        )
        lines.append(
            f"| {regime[3:]} | non-finite steps / collapses | {t['grpo']['nonfinite_steps']} / "
            f"{t['grpo']['collapses']} | {t['sapo']['nonfinite_steps']} / {t['sapo']['collapses']} |  |"
        )
    return "\n".join(lines) + "\n"


def _series_mean(runs: list[dict], regime: str, arm: str, key: str) -> float:
    """Mean over an arm's seeds of each run's mean of one optional per-step series (`extra_series`)."""
    from benchmarks import learning

    per_run = [learning._mean_of(r["extra_series"][key]) for r in runs if r["regime"] == regime and r["arm"] == arm]
    return statistics.fmean(x for x in per_run if x is not None)


def lag0_check(runs: list[dict]) -> dict:
    """What lag 0 shows of the lag being real: the largest |r − 1| and mean |log r| any step saw, SAPO's gradient
    weight range, and the seeds on which both arms' runs are identical (training reward, entropy, KL to π_0,
    held-out result; float-level noise in the other series, e.g. a grad norm's last stored digit, aside)."""
    lag0 = [r for r in runs if r["regime"] == "lag0"]
    values = lambda key, runs=lag0: [x for r in runs for x in r["series"][key] if x is not None]  # noqa: E731
    weights = [
        x for r in lag0 if r["arm"] == "sapo" for x in r["extra_series"]["sapo_grad_weight_mean"] if x is not None
    ]
    by = {(r["arm"], r["seed"]): r for r in lag0}
    seeds = sorted(s for a, s in by if a == "grpo" and ("sapo", s) in by)
    same = ("reward", "entropy", "kl_to_init")
    identical = [
        s
        for s in seeds
        if all(by["grpo", s]["series"][k] == by["sapo", s]["series"][k] for k in same)
        and by["grpo", s]["eval_after"] == by["sapo", s]["eval_after"]
    ]
    return {
        "runs": len(lag0),
        "ratio_dev": max(abs(x - 1) for x in values("ratio_max")),
        "abs_log_ratio": max(values("abs_log_ratio")),
        "weights": (min(weights), max(weights), len(weights)),
        "identical": len(identical),
        "seeds": len(seeds),
    }


def copy_async_lag0() -> str:
    study = _study(COPY_ASYNC)
    if study is None:
        return f"*No runs recorded yet (docs/results/{COPY_ASYNC} is absent).*\n"
    agg, runs = study
    c = lag0_check(runs)
    low, high, n = c["weights"]
    passed = c["ratio_dev"] < 1e-4 and max(abs(low - 1), abs(high - 1)) < 1e-4 and c["identical"] == c["seeds"]
    stale = [agg[r]["arms"]["grpo"]["abs_log_ratio_mean"]["mean"] for r in _lags(agg) if r != "lag0"]
    return (
        f"**Lag 0 (the check that the lag is real): {'passed' if passed else 'FAILED'}.** Over the {c['runs']} `lag0` "
        f"runs the largest |r − 1| any step saw is {c['ratio_dev']:.2g} (stored to 4 digits) and the largest mean "
        f"|log r| {c['abs_log_ratio']:.2g}; SAPO's gradient weight is {low:.7f}-{high:.7f} on all {n} steps (ratio 1, "
        f"gate weight 1); and the two arms' runs are identical (training reward, entropy, KL(π_θ‖π_0), held-out "
        f"result) on {c['identical']} of {c['seeds']} seeds, as on-policy GRPO-clip and SAPO must be. At lag > 0 the "
        f"mean |log r| of GRPO's runs is {min(stale):.2g}-{max(stale):.2g}: the staleness is what moves r.\n"
    )


def copy_async_timing() -> str:
    _, runs = _study(COPY_ASYNC)
    seconds = [r["train_seconds"] for r in runs]
    steps = {r["steps"] for r in runs}
    return (
        f"({len(runs)} runs of {'/'.join(map(str, sorted(steps)))} steps, training {min(seconds):.1f}-"
        f"{max(seconds):.0f} s per run (median {statistics.median(seconds):.1f} s, the worker's start included), "
        f"{sum(seconds) / 60:.0f} min of training in all, one torch thread on the 2-vCPU machine above, shared with "
        "other work.)\n"
    )


def _staleness_verdicts(agg: dict) -> dict[str, dict[str, str]]:
    """lag -> metric -> verdict of the paired SAPO − GRPO interval."""
    keys = {"held-out score": "heldout_after", "mean training reward": "train_reward_mean",
            "final training reward": "train_reward_final"}  # fmt: skip
    return {
        regime: {label: verdict(agg[regime]["arms"]["sapo"]["vs_grpo"][key], "SAPO") for label, key in keys.items()}
        for regime in _lags(agg)
    }


def copy_async_reading() -> str:
    """One line per lag: the verdicts the paired intervals allow (lag 0: the arms are identical by construction)."""
    study = _study(COPY_ASYNC)
    if study is None:
        return f"*No runs recorded yet (docs/results/{COPY_ASYNC} is absent).*\n"
    agg, runs = study
    lines = []
    for regime, verdicts in _staleness_verdicts(agg).items():
        pairs = agg[regime]["arms"]["sapo"]["vs_grpo"]["heldout_after"]["n"]
        words = "; ".join(f"{label}: {_bold(v)}" for label, v in verdicts.items())
        if regime == "lag0":
            c = lag0_check(runs)
            words = f"the arms are identical on {c['identical']} of {c['seeds']} seeds (on-policy), so nothing to rank"
        lines.append(f"- *Lag {regime[3:]}* ({pairs} paired seeds): {words}.")
    return "\n".join(lines) + "\n"


def _bold(word: str) -> str:
    return f"**{word}**" if word.endswith("ahead") else word


def async_staleness_status() -> str:
    """The README's sentence(s): what the copy-task staleness study found, and where the SmolLM2 regime stands."""
    study = _study(COPY_ASYNC)
    if study is None:
        return "The staleness study has not been run yet (docs/results.md §2d).\n"
    agg, runs = study
    verdicts = _staleness_verdicts(agg)
    stale = [r for r in verdicts if r != "lag0"]
    c = lag0_check(runs)
    pairs = agg[stale[0]]["arms"]["sapo"]["vs_grpo"]["heldout_after"]["n"]

    def by_lag(label: str) -> str:
        return ", ".join(f"lag {r[3:]} {verdicts[r][label]}" for r in stale)

    return (
        f"Staleness study on the copy task (SAPO τ 1 vs GRPO-clip, rollouts from a policy a fixed "
        f"{', '.join(r[3:] for r in verdicts)} versions old, {pairs} paired seeds per lag, "
        "[docs/results.md §2d](docs/results.md)): "
        f"at lag 0 the two objectives are identical ({c['identical']} of {c['seeds']} seeds, the on-policy check); "
        f"on mean training reward {by_lag('mean training reward')}; on held-out score {by_lag('held-out score')}. "
        f"{gsm8k_async_status(short=True)}\n"
    )


def gsm8k_async_status(short: bool = False) -> str:
    """The SmolLM2-135M async regime: k of the planned paired seeds, the paired held-out and training-reward verdicts,
    and the time per run (§2d; `short`: one sentence for the README)."""
    from benchmarks import learning

    study = _study(GSM8K_ASYNC)
    agg, runs = study if study is not None else ({}, [])
    planned = learning.PLANNED_GSM8K_ASYNC_SEEDS
    (regime,) = learning.REGIMES["gsm8k-async"]
    arms = agg.get(regime, {}).get("arms", {})
    vs = arms["sapo"]["vs_grpo"] if "sapo" in arms and "vs_grpo" in arms["sapo"] else None
    pairs = vs["heldout_after"]["n"] if vs else 0
    lag = regime.removeprefix("lag")
    if short:
        if not vs:
            return f"Its SmolLM2-135M regime at lag {lag} has not been run yet (0 of {planned} paired seeds)."
        count = f"{pairs} of {planned} paired seeds" if pairs < planned else f"{pairs} paired seeds"
        return (
            f"Its SmolLM2-135M regime at lag {lag} ({count}): held-out accuracy "
            f"{verdict(vs['heldout_after'], 'SAPO')}, mean training reward {verdict(vs['train_reward_mean'], 'SAPO')}."
        )
    if pairs >= planned:
        status = f"{pairs} paired seeds"
    else:
        status = (
            f"**{'partial' if pairs else 'not run yet'}**: {pairs} of {planned} paired seeds; the runs start or "
            "resume with the command above, and this paragraph is regenerated from the JSON"
        )
    found = (
        f"held-out accuracy after training, paired SAPO − GRPO {_paired(vs['heldout_after'], 'SAPO')}; mean "
        f"training reward, paired {_paired(vs['train_reward_mean'], 'SAPO')}"
        if vs
        else "no pair yet"
    )
    if vs and pairs >= 3 and "abs_log_ratio_mean" in vs:  # how far each arm moves the policy (as §2d's copy table)
        found += (
            f". How far the policy moves: mean |log r| seen by the loss, paired SAPO − GRPO "
            f"{_paired_small(vs['abs_log_ratio_mean'])}; KL(π_θ‖π_0) at the end, GRPO "
            f"{_ms(arms['grpo']['kl_to_init_final'])}, SAPO {_ms(arms['sapo']['kl_to_init_final'])}"
        )
    minutes = [(r["train_seconds"] + r.get("eval_seconds", 0)) / 60 for r in runs if not r.get("resumed_from")]
    timing = (
        f" Training + held-out evaluation per run: {min(minutes):.1f}-{max(minutes):.1f} min (`OMP_NUM_THREADS=1`, "
        "up to two runs side by side on the 2 shared cores)."
        if minutes
        else ""
    )
    return f"SmolLM2-135M async regime at lag {lag} ({status}): {found}.{timing}\n"


BLOCKS: dict[str, Callable[[], str]] = {
    "demo-bar": demo_bar,
    "demo-trials": demo_trials,
    "rewards": rewards,
    "copy-headline": copy_headline,
    "copy-tau": copy_tau,
    "copy-timing": copy_timing,
    "gsm8k-realism": gsm8k_realism,
    "gsm8k-realism-status": gsm8k_realism_status,
    "copy-async-headline": copy_async_headline,
    "copy-async-lag0": copy_async_lag0,
    "copy-async-timing": copy_async_timing,
    "copy-async-reading": copy_async_reading,
    "async-staleness-status": async_staleness_status,
    "gsm8k-async": lambda: gsm8k_realism(GSM8K_ASYNC),
    "gsm8k-async-status": gsm8k_async_status,
    "demo-seeds": demo_seeds,
    "demo-seeds-short": lambda: demo_seeds(short=True),
}


def render(text: str, cache: dict[str, str]) -> str:
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"unknown generated block {name!r}; known: {sorted(BLOCKS)}")
        if name not in cache:
            cache[name] = BLOCKS[name]()
        return match.group(1) + cache[name] + match.group(4)

    return BLOCK_RE.sub(fill, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    cache: dict[str, str] = {}
    stale = []
    for path in DOCS:
        text = path.read_text()
        new = render(text, cache)
        if new != text:
            stale.append(path.relative_to(REPO_ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(map(str, stale))}; run python -m benchmarks.docs_numbers", file=sys.stderr)
        return 1
    print(("up to date: " if args.check or not stale else "rewrote: ") + ", ".join(map(str, stale or DOCS)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
