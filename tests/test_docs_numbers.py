"""The numbers in README.md and docs/results.md are the committed JSON's: every generated block is up to date, and
the words that rank two arms follow the paired interval."""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks import learning


@pytest.fixture(scope="module")
def docs_numbers():
    from benchmarks import docs_numbers

    return docs_numbers


def test_generated_blocks_match_the_committed_json(docs_numbers, capsys):
    assert docs_numbers.main(["--check"]) == 0, capsys.readouterr().err
    blocks = {m["name"] for path in docs_numbers.DOCS for m in docs_numbers.BLOCK_RE.finditer(path.read_text())}
    assert {
        "copy-headline",
        "copy-tau",
        "copy-timing",
        "gsm8k-realism",
        "gsm8k-realism-status",
        "rewards",
        "demo-seeds",
        "copy-async-headline",
        "copy-async-lag0",
        "copy-async-timing",
        "copy-async-reading",
        "async-staleness-status",
        "gsm8k-async",
        "gsm8k-async-status",
    } <= blocks


def test_a_stale_block_is_detected_and_rewritten(docs_numbers, tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "before\n<!-- generated:copy-timing -->\n170 runs, 9-35 s per run\n<!-- /generated:copy-timing -->\n"
    )
    monkeypatch.setattr(docs_numbers, "DOCS", (doc,))
    monkeypatch.setattr(docs_numbers, "REPO_ROOT", tmp_path)
    assert docs_numbers.main(["--check"]) == 1 and "9-35 s" in doc.read_text()
    assert docs_numbers.main([]) == 0
    text = doc.read_text()
    assert "9-35 s" not in text and "training 4.8-80 s per run" in text and text.startswith("before\n")
    assert docs_numbers.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("mean", "ci95", "expected"),
    [
        (0.05, 0.03, "SAPO ahead"),
        (-0.032, 0.030, "GRPO ahead"),
        (0.02, 0.03, "not separable"),
        (0.1, None, "too few seeds to rank"),
    ],
)
def test_verdict_follows_the_interval(docs_numbers, mean, ci95, expected):
    assert docs_numbers.verdict({"mean": mean, "ci95": ci95}, "SAPO") == expected
    if expected.endswith("ahead"):  # lower is better: the other arm is ahead
        flipped = "GRPO ahead" if expected == "SAPO ahead" else "SAPO ahead"
        assert docs_numbers.verdict({"mean": mean, "ci95": ci95}, "SAPO", higher_is_better=False) == flipped
    assert docs_numbers.verdict({"mean": mean, "ci95": 0.0 if ci95 else None, "n": 2}, "SAPO") == (
        "too few seeds to rank"
    )
    assert docs_numbers.verdict({"mean": None, "ci95": None, "n": 0}, "SAPO") == "n/a"  # no finished pair


def test_demo_seed_blocks_render_from_a_seed_study(docs_numbers, tmp_path, monkeypatch):
    """benchmarks/demo_seeds.py --report_only over stored summaries -> demo_seeds.json -> the README's short block
    (distribution and per-operation table) and the results page's full table."""
    from tools.stats import paired_accuracy_diff

    rows = {"all held-out problems": 8, "operation +": 4, "operation -": 4}
    for seed, gained in ((0, 2), (1, 3)):
        subsets = {}
        for name, n in rows.items():
            before, after = [False] * n, [i < gained for i in range(n)]
            subsets[name] = {
                "before": {"accuracy": 0.0, "n": n},
                "after": {"accuracy": sum(after) / n, "n": n},
                "gain": paired_accuracy_diff(before, after),
            }
        run_dir = tmp_path / "runs" / f"seed{seed}"
        run_dir.mkdir(parents=True)
        summary = {"subsets": subsets, "threads": os.cpu_count(), "wall_time_s": {"total": 700.0}, "training": {}}
        (run_dir / "summary.json").write_text(json.dumps({**summary, "recipe_sha256": "f00"}))
    results = tmp_path / "results"
    from benchmarks import demo_seeds as study

    study.main(["--seeds", "0", "1", "2", "--report_only", "--output_dir", str(tmp_path / "runs"),
                "--results_dir", str(results)])  # fmt: skip
    monkeypatch.setattr(docs_numbers, "RESULTS", results)
    short = docs_numbers.demo_seeds(short=True)
    assert "Over 2 training seeds" in short and "min +0.250, mean +0.312" in short and "max +0.375" in short
    assert "| operation + | 4 | 0.000 → 0.625 | +0.625 ± " in short
    assert "(per seed: +0.250, +0.375)" in short and f"min per run at {os.cpu_count()} threads." in short
    assert "every seed gains" not in short  # the bar the recipe was chosen against is in results.md §2c (issue 29)
    full = docs_numbers.demo_seeds()
    assert "| every seed gains >= +0.05 | yes |" in full and "| no operation loses on average | yes |" in full
    assert (
        "| seed | threads | before | after | gain |" in full
        and f"| every run at {os.cpu_count()} threads <= 15 min | yes |" in full
    )


def test_realism_status_says_partial_until_every_regime_has_the_planned_seeds(docs_numbers, monkeypatch):
    """The README/§2b status paragraph: 'partial' with per-regime counts below the plan, the verdict the paired
    held-out interval allows, the SAPO-chosen caveat on the demo regime, and training time from the runs."""

    def study(pairs: dict[str, tuple[float, float, int]]):
        agg = {
            regime: {"arms": {"grpo": {}, "sapo": {"vs_grpo": {"heldout_after": {
                "mean": mean, "ci95": ci, "n": n, "wins": n, "losses": 0}}}}}
            for regime, (mean, ci, n) in pairs.items()
        }  # fmt: skip
        return agg, [{"regime": "demo", "train_seconds": 600.0}, {"regime": "demo", "train_seconds": 900.0},
                     {"regime": "reuse", "train_seconds": 1200.0, "resumed_from": "checkpoint-2"}]  # fmt: skip

    monkeypatch.setattr(docs_numbers, "_study", lambda name: study({"demo": (0.1, 0.3, 2)}))
    text = docs_numbers.gsm8k_realism_status()
    assert "**partial**: paired seeds `demo` 2 of 5, `reuse` 0 of 5" in text
    assert "`demo` (a recipe chosen with SAPO: its home ground) +0.100 ± 0.300 (2/2), too few seeds to rank" in text
    assert "`reuse` no pair yet" in text and "Training per run: `demo` 10.0-15.0 min (" in text

    monkeypatch.setattr(docs_numbers, "_study", lambda name: study({"demo": (0.1, 0.05, 5), "reuse": (-0.02, 0.1, 5)}))
    text = docs_numbers.gsm8k_realism_status()
    assert "(5 paired seeds per regime)" in text and "partial" not in text
    assert "+0.100 ± 0.050 (5/5), **SAPO ahead**" in text and "-0.020 ± 0.100 (5/5), not separable" in text


def test_pairs_needed_to_resolve_a_difference_follow_the_t_interval(docs_numbers):
    """+0.037 ± 0.070 over 5 pairs (per-pair sd 0.0564): 11 pairs give ± 0.038 (still covers 0), 12 give ± 0.036."""
    assert docs_numbers._pairs_to_resolve({"mean": 0.037, "ci95": 0.070, "n": 5}) == "≈ 12 (the study has 5)"
    assert docs_numbers._pairs_to_resolve({"mean": -0.037, "ci95": 0.070, "n": 5}) == "≈ 12 (the study has 5)"
    assert docs_numbers._pairs_to_resolve({"mean": 0.5, "ci95": 0.01, "n": 5}) == "≈ 3 (the study has 5)"
    assert docs_numbers._pairs_to_resolve({"mean": 0.0, "ci95": 0.07, "n": 5}) == "n/a"
    assert docs_numbers._pairs_to_resolve({"mean": 0.001, "ci95": 0.5, "n": 5}) == "more than 1000"


def test_demo_bar_table_counts_seeds_and_names_the_worst_operation(docs_numbers, tmp_path, monkeypatch):
    """Each SAPO configuration's row: gains per seed, min / mean / max, seeds at +0.05 or more, the operation with
    the lowest mean gain; screened trial recipes appear once they have two seeds."""
    ops = ("operation +", "operation /")
    seed_runs = [
        {
            "before": 0.25,
            "gain": g,
            "gain_by_row": {"operation +": 0.2, "operation /": d},
            "threads": 2,
            "wall_time_s": 600.0,
        }
        for g, d in ((0.10, -0.1), (0.02, 0.0), (0.06, -0.05))
    ]
    trial = lambda seed, g: {  # noqa: E731
        "recipe": "cX: a candidate", "seed": seed, "threads": 1, "wall_time_s": {"total": 900.0},
        "gain": {"all held-out problems": g, **dict.fromkeys(ops, 0.0)}, "accuracy": {"all held-out problems": [0.1, 0.2]},
    }  # fmt: skip
    (tmp_path / "demo_seeds.json").write_text(json.dumps({"runs": seed_runs}))
    (tmp_path / "demo_recipe_trials.json").write_text(
        json.dumps({"runs": [trial(4, 0.1), trial(1, -0.02), {**trial(4, 0.3), "recipe": "one seed only"}]})
    )
    monkeypatch.setattr(docs_numbers, "RESULTS", tmp_path)  # no learning_gsm8k.json: no study rows
    table = docs_numbers.demo_bar()
    assert (
        "| the demo recipe (r5) through `make demo` | 3 | 0.250 | +0.100, +0.020, +0.060 | +0.020 / +0.060 ± " in table
    )
    assert "| 2/3 | operation / -0.050 ± " in table and "| 10.0-10.0 (whole demo, 2 threads) |" in table
    assert (
        "| cX: a candidate (`scripts/demo.py --recipe`) | 2 | 0.100 | +0.100, -0.020 |" in table and "| 1/2 |" in table
    )
    assert "one seed only" not in table and "regime" not in table


def _copy_async_run(regime: str, arm: str, seed: int, reward: float, heldout: float, log_ratio: float = 0.0) -> dict:
    """A copy-async run record as benchmarks/learning.py writes it (40 steps, constant series)."""
    n, sapo = 40, arm == "sapo"
    return {
        "task": "copy-async", "regime": regime, "arm": arm, "seed": seed, "steps": n, "train_seconds": 10.0 + seed,
        "eval_before": {"reward": 0.07}, "eval_after": {"reward": heldout}, "nonfinite_steps": [],
        "series": {"reward": [reward] * n, "entropy": [1.5] * n, "grad_norm": [2.0] * n, "kl_to_init": [1.0] * n,
                   "step_kl": [0.001 * (1 + log_ratio)] * n, "ratio_max": [math.exp(log_ratio)] * n,
                   "abs_log_ratio": [log_ratio] * n},
        "extra_series": {"clip_ratio": [None if sapo else 0.1] * n,
                         "sapo_grad_weight_mean": [(1.0 - log_ratio) if sapo else None] * n},
    }  # fmt: skip


def test_staleness_blocks_render_the_verdicts_the_intervals_allow(docs_numbers, tmp_path, monkeypatch):
    """§2d and the README status from a copy-async study: at lag 4 SAPO is ahead on training reward on every seed
    (interval excludes 0) and not separable on held-out (differences of both signs); lag 0 is the on-policy check,
    which fails as soon as the arms differ on one seed."""
    runs = []
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        runs += [_copy_async_run("lag0", arm, seed, 0.3 + noise, 0.9) for arm in ("grpo", "sapo")]
        runs.append(_copy_async_run("lag4", "grpo", seed, 0.3 + noise, 0.9, log_ratio=0.1))
        runs.append(_copy_async_run("lag4", "sapo", seed, 0.35 + 2 * noise, 0.9 + 5 * noise, log_ratio=0.2))
    (tmp_path / "learning_copy-async.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(docs_numbers, "RESULTS", tmp_path)

    table = docs_numbers.copy_async_headline()
    assert (
        "| 4 | mean training reward | 0.300 ± 0.025 | 0.350 ± 0.050 | +0.050 ± 0.025 (3/3), **SAPO ahead** |" in table
    )
    assert (
        "| 4 | held-out score after | 0.900 ± 0.000 | 0.900 ± 0.124 | +0.000 ± 0.124 (1/3), not separable |" in table
    )
    assert (
        "| 4 | tokens clipped (GRPO) / gradient weight (SAPO), mean over steps and seeds | 0.100 | 0.800 |  |" in table
    )
    assert "**SAPO larger**" in table  # per-step KL and |log r| at lag 4
    reading = docs_numbers.copy_async_reading()
    assert (
        "- *Lag 0* (3 paired seeds): the arms are identical on 3 of 3 seeds (on-policy), so nothing to rank."
        in reading
    )
    assert (
        "- *Lag 4* (3 paired seeds): held-out score: not separable; mean training reward: **SAPO ahead**; final "
        "training reward: **SAPO ahead**." in reading
    )
    lag0 = docs_numbers.copy_async_lag0()
    assert lag0.startswith("**Lag 0 (the check that the lag is real): passed.**") and "on 3 of 3 seeds" in lag0
    status = docs_numbers.async_staleness_status()
    assert "a fixed 0, 4 versions old, 3 paired seeds per lag" in status
    assert "on mean training reward lag 4 SAPO ahead; on held-out score lag 4 not separable." in status
    planned = learning.PLANNED_GSM8K_ASYNC_SEEDS
    assert status.endswith(f"Its SmolLM2-135M regime at lag 4 has not been run yet (0 of {planned} paired seeds).\n")
    assert (
        "(80 runs" not in docs_numbers.copy_async_timing()
        and "12 runs of 40 steps" in docs_numbers.copy_async_timing()
    )

    runs[1]["series"]["reward"] = [0.31] * 40  # lag 0, seed 0: SAPO's run differs from GRPO's
    (tmp_path / "learning_copy-async.json").write_text(json.dumps({"runs": runs}))
    lag0 = docs_numbers.copy_async_lag0()
    assert "FAILED" in lag0 and "on 2 of 3 seeds" in lag0


def test_gsm8k_async_status_counts_paired_seeds_until_the_plan_is_met(docs_numbers, monkeypatch):
    """The SmolLM2 async regime's status (§2d, README): not run yet, then 'partial: k of N paired seeds', then the
    verdicts the paired intervals allow, with the time per run of the runs that were not resumed (here N = 5)."""
    monkeypatch.setattr(learning, "PLANNED_GSM8K_ASYNC_SEEDS", 5)

    def study(mean: float, ci: float | None, n: int):
        diff = {"mean": mean, "ci95": ci, "n": n, "wins": n, "losses": 0}
        log_ratio = {"mean": 0.027, "ci95": 0.005, "n": n, "wins": n, "losses": 0}
        vs = {"heldout_after": diff, "train_reward_mean": diff, "abs_log_ratio_mean": log_ratio}
        grpo = {"kl_to_init_final": {"mean": 0.024, "ci95": 0.004}}
        sapo = {"kl_to_init_final": {"mean": 0.1, "ci95": 0.02}, "vs_grpo": vs}
        agg = {"lag4": {"arms": {"grpo": grpo, "sapo": sapo}}}
        runs = [{"regime": "lag4", "train_seconds": 420.0, "eval_seconds": 120.0},
                {"regime": "lag4", "train_seconds": 100.0, "eval_seconds": 120.0, "resumed_from": "checkpoint-8"}]  # fmt: skip
        return lambda name: (agg, runs) if name == docs_numbers.GSM8K_ASYNC else None

    monkeypatch.setattr(docs_numbers, "_study", lambda name: None)
    assert "**not run yet**: 0 of 5 paired seeds" in docs_numbers.gsm8k_async_status()
    monkeypatch.setattr(docs_numbers, "_study", study(0.05, 0.2, 2))
    text = docs_numbers.gsm8k_async_status()
    assert "(**partial**: 2 of 5 paired seeds;" in text and "+0.050 ± 0.200 (2/2), too few seeds to rank" in text
    assert "Training + held-out evaluation per run: 9.0-9.0 min (" in text
    assert docs_numbers.gsm8k_async_status(short=True) == (
        "Its SmolLM2-135M regime at lag 4 (2 of 5 paired seeds): held-out accuracy too few seeds to rank, mean "
        "training reward too few seeds to rank."
    )
    monkeypatch.setattr(docs_numbers, "_study", study(-0.05, 0.03, 5))
    text = docs_numbers.gsm8k_async_status()
    assert "(5 paired seeds)" in text and "partial" not in text and "-0.050 ± 0.030 (5/5), **GRPO ahead**" in text
    assert (
        "How far the policy moves: mean |log r| seen by the loss, paired SAPO − GRPO +0.027 ± 0.005 (5/5 seeds "
        "larger), **SAPO larger**; KL(π_θ‖π_0) at the end, GRPO 0.024 ± 0.004, SAPO 0.100 ± 0.020." in text
    )


def test_change_reading_needs_three_seeds(docs_numbers):
    """Two seeds with the same gain give a zero-width interval: that is 'too few seeds', not 'better after training'
    (the SmolLM2 async table said so at 2 seeds)."""
    assert docs_numbers._reading({"mean": 0.016, "ci95": 0.0, "n": 2}) == "too few seeds"
    assert docs_numbers._reading({"mean": 0.016, "ci95": 0.01, "n": 3}) == "better after training"
    assert docs_numbers._reading({"mean": -0.016, "ci95": 0.01, "n": 3}) == "worse after training"
    assert docs_numbers._reading({"mean": 0.016, "ci95": 0.02, "n": 3}) == "not separable from no change"
