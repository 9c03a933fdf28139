"""The benchmark scripts' --smoke modes run end to end and write complete, finite, self-consistent JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# Each smoke run needs ~30 s of CPU (mostly imports and trainer construction); the timeouts are generous because a
# shared CI machine can stretch that wall-clock time several-fold.
pytestmark = pytest.mark.slow


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_loss_overhead_smoke(tmp_path, smollm2_path):
    out = tmp_path / "loss_overhead.json"
    proc = _run(
        ["benchmarks/loss_overhead.py", "--smoke", "--proto", "--proto_trainer", "--output", str(out)], timeout=170
    )
    result = json.loads(out.read_text())
    assert "SAPOTrainer ms" in proc.stdout  # the markdown table is printed

    assert [e["completion_len"] for e in result["trainer"]] == [32, 64]
    for entry in result["trainer"]:
        for name in ("sapo", "trl_sapo", "trl_grpo", "sapo_proto"):
            t = entry[name]["time_s"]
            assert t["n"] == result["args"]["repeats"] and _finite_positive(t["median"]), (name, t)
            assert t["q1"] <= t["median"] <= t["q3"]
            assert _finite_positive(entry[name]["memory"]["peak_bytes"])
            assert "MemTracker" in entry[name]["memory"]["method"]  # CPU run: the tracker, not cuda stats
            assert _finite_positive(entry[name]["saved_tensor_bytes"])
        for key in ("sapo/trl_sapo", "sapo/trl_grpo", "sapo_proto/trl_sapo", "sapo_proto/sapo"):
            assert _finite_positive(entry["time_ratio"][key])
            assert _finite_positive(entry["memory_ratio"][key])
        # the ratio really is the quotient of the medians
        expected = entry["sapo"]["time_s"]["median"] / entry["trl_sapo"]["time_s"]["median"]
        assert entry["time_ratio"]["sapo/trl_sapo"] == pytest.approx(expected)

    iso = result["isolated"]
    assert (iso["batch_size"], iso["length"]) == (8, 256)
    for name in ("sapo", "trl_sapo", "trl_grpo", "sapo_proto"):
        assert _finite_positive(iso[name]["time_s"]["median"])
    # Deterministic property of the implementations: SAPO's custom backward saves only log r (and a view of τ),
    # TRL's naive autograd graph also keeps exp(log r) and σ(z); so SAPO saves strictly fewer bytes.
    assert iso["saved_bytes_ratio"]["sapo/trl_sapo"] < 1.0
    assert result["machine"]["torch"] and result["machine"]["device"] == "cpu"


def test_learning_smoke_and_resume(tmp_path):
    """benchmarks/learning.py --smoke: both arms on the copy task, per-step series, summaries, report, plot; a re-run
    reuses finished runs (done.json) instead of training again."""
    out_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    args = ["benchmarks/learning.py", "--smoke", "--output_dir", str(out_dir), "--results_dir", str(results_dir)]
    _run(args, timeout=300)
    result = json.loads((results_dir / "learning_copy-smoke.json").read_text())
    arms = result["regimes"]["base"]["arms"]
    assert set(arms) == {"sapo", "grpo"} and arms["sapo"]["seeds"] == [0]
    assert "vs_grpo" in arms["sapo"] and "vs_grpo" not in arms["grpo"]
    report = (results_dir / "learning_copy-smoke.md").read_text()
    assert report.startswith("# Learning study") and "| Held-out score after training |" in report
    assert (results_dir / "learning_copy-smoke.png").stat().st_size > 10_000

    for run in result["runs"]:
        assert (out_dir / "base" / f"{run['arm']}-seed{run['seed']}" / "done.json").exists()
        assert run["steps"] == 12 and run["nonfinite_steps"] == []
        series = run["series"]
        assert all(len(values) == 12 for values in series.values())
        # reward: logged on the 3 generating steps (steps_per_generation=4), carried over the steps reusing them
        assert all(0.0 <= r <= 1.0 for r in series["reward"])
        assert series["reward"][:4] == [series["reward"][0]] * 4
        assert all(math.isfinite(x) and x >= 0.0 for x in series["kl_to_init"] + series["step_kl"])
        assert series["kl_to_init"][-1] > 0.0  # the policy moved
        # the ratio is measured for both arms: exactly 1 on each rollout's first (on-policy) step, then off-policy
        assert series["ratio_max"][0] == pytest.approx(1.0, abs=1e-4)
        assert max(series["ratio_max"]) > 1.0
        assert 0.0 <= run["eval_after"]["reward"] <= 1.0

    # Re-running skips finished runs and only re-aggregates: same per-run results.
    marker = out_dir / "base" / "sapo-seed0" / "done.json"
    record = json.loads(marker.read_text())
    record["marker"] = True  # a retrained run would rewrite done.json without it
    marker.write_text(json.dumps(record))
    _run(args, timeout=300)
    again = json.loads((results_dir / "learning_copy-smoke.json").read_text())
    assert next(r for r in again["runs"] if r["arm"] == "sapo")["marker"] is True
