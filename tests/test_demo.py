"""`make demo`'s script end to end on a tiny model: evaluation before/after, the real training script, the report
and summary.json. (The real demo, SmolLM2 for 16 steps, takes ~11 minutes; its numbers are in the README.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from trl_sapo.tools.offline import OFFLINE_ENV


@pytest.mark.slow
def test_demo_runs_the_script_and_writes_a_summary(tmp_path, tiny_model_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier demo")  # a demo is a fresh run: the folder is replaced
    command = [sys.executable, "-m", "scripts.demo", "--model_name_or_path", str(tiny_model_path)]
    command += ["--output_dir", str(out), "--max_steps", "2", "--num_eval_examples", "8", "--seed", "3"]
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert "scripts/gsm8k_sapo.py --config" in proc.stdout and "recipes/smollm2-135m_cpu_demo.yaml" in proc.stdout
    assert "--seed 3" in proc.stdout
    assert "{'loss'" not in proc.stdout  # per-step dicts are summarised, not printed
    assert "accuracy, all held-out problems (n=8)" in proc.stdout and "wall time:" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert not (out / "stale.txt").exists() and (out / "trainer_state.json").exists()
    operations = {f"operation {op}" for op in "+-*/"}
    assert (
        set(summary["subsets"]) == {"same kind as training", "unseen phrasings", "all held-out problems"} | operations
    )
    for op in operations:  # 8 held-out problems, 4 per subset: each operation once per subset
        assert summary["subsets"][op]["before"]["n"] == 2 and f"accuracy, {op} (n=2)" in proc.stdout
    assert (
        summary["seed"] == 3 and "seeds of this recipe" not in proc.stdout
    )  # no seed-study comparison for a tiny model
    everything = summary["subsets"]["all held-out problems"]
    assert everything["before"]["n"] == everything["after"]["n"] == 8
    for when in ("before", "after"):
        low, high = everything[when]["ci95"]
        assert 0.0 <= low <= everything[when]["accuracy"] <= high <= 1.0
    gain = everything["after"]["accuracy"] - everything["before"]["accuracy"]
    assert everything["gain"]["diff"] == pytest.approx(gain)
    assert summary["training"]["steps"] == 2 and set(summary["wall_time_s"]) == {
        "eval_before",
        "train",
        "eval_after",
        "total",
    }


def _summary(seed: int, gains: dict[str, tuple[bool, bool]], digest: str = "abc") -> dict:
    """A scripts/demo.py summary.json with the given (before, after) outcomes per report row."""
    from tools.stats import paired_accuracy_diff

    subsets = {}
    for name, outcomes in gains.items():
        before, after = [b for b, _ in outcomes], [a for _, a in outcomes]
        subsets[name] = {
            "before": {"accuracy": sum(before) / len(before), "n": len(before)},
            "after": {"accuracy": sum(after) / len(after), "n": len(after)},
            "gain": paired_accuracy_diff(before, after),
        }
    return {"subsets": subsets, "threads": 2, "wall_time_s": {"total": 600.0}, "training": {}, "recipe_sha256": digest}


def test_seed_study_aggregates_and_checks(tmp_path, monkeypatch):
    from benchmarks import demo_seeds as study

    monkeypatch.setattr(study.os, "cpu_count", lambda: 2)  # the time limit counts runs on every core: 2 here
    improve, flat, worse = (
        [(False, True)] * 2 + [(True, True)] * 2,
        [(True, True)] * 4,
        [(True, False)] + [(False, False)] * 3,
    )
    rows = [
        study.per_seed_row(
            0, _summary(0, {"all held-out problems": improve, "operation +": improve, "operation -": flat})
        ),
        study.per_seed_row(
            1, _summary(1, {"all held-out problems": improve, "operation +": flat, "operation -": worse})
        ),
    ]
    agg = study.aggregate(rows)
    assert agg["gain"]["mean"] == pytest.approx(0.5) and agg["gain_min"] == agg["gain_max"] == pytest.approx(0.5)
    assert agg["gain_by_row"]["operation -"]["mean"] == pytest.approx(-0.125)
    assert agg["checks"]["every seed gains >= +0.05"] and agg["checks"]["mean gain >= +0.10"]
    assert agg["checks"]["95 % interval of the mean excludes 0"]  # two equal gains: a zero-width interval
    assert not agg["checks"]["no operation loses on average"]  # operation - lost on seed 1
    assert agg["checks"]["every run at 2 threads <= 15 min"]  # 10 min each
    slow_one_thread = {**rows[1], "threads": 1, "wall_time_s": 1500.0}  # 25 min on 1 thread: not the 2-core time
    assert study.aggregate([rows[0], slow_one_thread])["checks"]["every run at 2 threads <= 15 min"]
    slow = {**rows[1], "wall_time_s": 1000.0}
    assert not study.aggregate([rows[0], slow])["checks"]["every run at 2 threads <= 15 min"]
    assert not study.aggregate([slow_one_thread])["checks"]["every run at 2 threads <= 15 min"]  # none timed
    mixed = study.aggregate(
        [
            rows[0],
            study.per_seed_row(
                2, _summary(2, dict.fromkeys(["all held-out problems", "operation +", "operation -"], flat))
            ),
        ]
    )
    assert mixed["gain"]["mean"] == pytest.approx(0.25) and not mixed["checks"]["every seed gains >= +0.05"]
    assert not mixed["checks"]["95 % interval of the mean excludes 0"]  # 0.5 and 0.0: t_1 interval ~ ±3.2
    text = study.markdown({"recipe": "r.yaml", "recipe_sha256": "abc", "runs": rows, "aggregate": agg})
    assert "| 1 | 2 | 0.500 | 1.000 | **+0.500** | +0.000 | -0.250 | 10.0 |" in text
    assert "| no operation loses on average | **no** |" in text


def test_demo_quotes_the_seed_study_only_for_its_own_recipe(tmp_path):
    from scripts import demo

    path = tmp_path / "demo_seeds.json"
    runs = [{"gain": g} for g in (0.06, 0.10, 0.20)]
    study = {
        "recipe_sha256": demo.recipe_digest(demo.RECIPE),
        "runs": runs,
        "aggregate": {"gain": {"mean": 0.12, "ci95": 0.18}},
    }
    path.write_text(json.dumps(study))
    text = demo.seed_context(0.15, path)
    assert "over 3 seeds of this recipe" in text and "+0.060 .. +0.200" in text and "2 of 3 seeds gained less" in text
    path.write_text(json.dumps({**study, "recipe_sha256": "0" * 16}))
    assert "another version" in demo.seed_context(0.15, path)
    assert demo.seed_context(0.15, tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("recipe_keys", "system_prompt", "num_few_shot"),
    [
        ({}, "DEFAULT", 0),
        ({"system_prompt": "Be brief."}, "Be brief.", 0),
        ({"system_prompt": "", "num_few_shot": 2}, "", 2),
    ],
)
def test_demo_evaluates_with_the_recipes_prompt_format(monkeypatch, recipe_keys, system_prompt, num_few_shot):
    """The held-out evaluation asks the question as training does (system prompt, few-shot turns, length budget):
    a recipe's system_prompt must not be trained on and then evaluated with the default one."""
    from datasets import Dataset

    import trl_sapo.gsm8k.evaluation as evaluation
    from trl_sapo.gsm8k.data import SYSTEM_PROMPT

    seen = {}

    def fake_evaluate(model, tokenizer, dataset, **kwargs):
        seen.update(kwargs)
        return {"predictions": [{"correct": [True]}], "format_rate": 1.0, "mean_completion_tokens": 5.0}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluation, "load_model_for_eval", lambda *a, **k: (None, None))
    from scripts import demo

    heldout = {"same kind as training": Dataset.from_dict({"question": ["1 + 1?"], "answer": ["#### 2"]})}
    demo.evaluate_model("unused", heldout, {"max_completion_length": 96, **recipe_keys}, "the base model")
    expected_prompt = SYSTEM_PROMPT if system_prompt == "DEFAULT" else system_prompt
    assert seen["system_prompt"] == expected_prompt and seen["num_few_shot"] == num_few_shot
    assert seen["max_new_tokens"] == 96


def test_seed_study_runs_a_candidate_recipe_through_make_demo_apart_from_the_demos_record(tmp_path, monkeypatch):
    """--recipe passes the candidate to `make demo`; without its own folders it is refused, so it cannot overwrite
    the record scripts/demo.py quotes."""
    from benchmarks import demo_seeds as study

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("max_completion_length: 96\n")
    with pytest.raises(SystemExit):
        study.main(["--seeds", "0", "--recipe", str(candidate)])
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        seed_dir = Path(command[-1].split("--output_dir ")[1].split()[0])
        seed_dir.mkdir(parents=True)
        summary = _summary(0, {"all held-out problems": [(False, True)] * 4, "operation +": [(False, True)] * 4})
        (seed_dir / "summary.json").write_text(json.dumps(summary))

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    out = tmp_path / "out"
    result = study.main(
        ["--seeds", "0", "--recipe", str(candidate), "--output_dir", str(out), "--results_dir", str(out)]
    )
    assert commands[0][:3] == ["make", "-s", "demo"] and f"--recipe {candidate}" in commands[0][-1]
    assert result["recipe"] == str(candidate) and (out / "demo_seeds.json").exists()


def _stat_reader(*samples):
    """A /proc/stat reader returning the given (idle, total) jiffies in turn."""
    it = iter(samples)
    return lambda: next(it)


def test_demo_threads_follow_idle_cores_now_not_the_load_average(monkeypatch):
    """`make test && make demo` on an idle machine: the suite has just raised the 1-minute load average, but the
    cores are idle now, so the demo trains at the thread count a lone `make demo` gets (issue 29: it printed 1)."""
    from scripts import demo

    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 3.0, 1.0), raising=False)  # right after the test suite
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    idle_machine = _stat_reader((1000, 2000), (1000 + 100 * cpus, 2000 + 100 * cpus))  # 100 % idle over the window
    after_tests = demo.idle_cores(read=idle_machine, sleep=lambda s: None)
    lone = demo.idle_cores(read=_stat_reader((5, 10), (5 + 50 * cpus, 10 + 50 * cpus)), sleep=lambda s: None)
    assert after_tests == lone == pytest.approx(cpus)
    threads, why = demo.pick_num_threads(environ={}, measure=lambda: after_tests)
    assert threads == usable and "idle" in why


def test_demo_threads_on_a_busy_machine_and_overrides(monkeypatch):
    from scripts import demo

    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    busy = demo.idle_cores(read=_stat_reader((0, 0), (0, 100 * cpus)), sleep=lambda s: None)  # every core busy
    assert busy == 0 and demo.pick_num_threads(environ={}, measure=lambda: busy)[0] == 1
    assert demo.pick_num_threads(environ={}, measure=lambda: usable - 0.8)[0] == max(1, usable - 1)
    assert demo.pick_num_threads(environ={}, measure=lambda: None) == (usable, "all cores (idle time not readable)")
    assert demo.idle_cores(read=lambda: None, sleep=lambda s: None) is None
    assert demo.pick_num_threads(environ={"OMP_NUM_THREADS": "3"}, measure=lambda: 0.0) == (3, "OMP_NUM_THREADS")
    for bad in ("0", "two", ""):
        with pytest.raises(SystemExit, match="OMP_NUM_THREADS"):
            demo.pick_num_threads(environ={"OMP_NUM_THREADS": bad})


def test_cpu_times_reads_the_aggregate_line(tmp_path):
    from scripts import demo

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n")
    assert demo.cpu_times(str(stat)) == (820, 980)
    assert demo.cpu_times(str(tmp_path / "missing")) is None
    real = demo.cpu_times()
    assert real is None or (0 <= real[0] <= real[1])
