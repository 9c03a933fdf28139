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


def test_learning_smoke_and_resume(tmp_path, smollm2_path):
    out_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    args = ["benchmarks/learning.py", "--smoke", "--output_dir", str(out_dir), "--results_dir", str(results_dir)]
    _run(args, timeout=540)
    result = json.loads((results_dir / "learning-smoke.json").read_text())
    assert set(result["arms"]) == {"sapo", "grpo"}
    assert (results_dir / "learning-smoke.md").read_text().startswith("# Learning benchmark")

    for run in result["runs"]:
        run_dir = out_dir / f"{run['arm']}-seed{run['seed']}"
        assert (run_dir / "done.json").exists() and not list(run_dir.glob("checkpoint-*"))
        assert run["steps"] == 2 and run["nonfinite_steps"] == []
        assert 0.0 <= run["eval_after"]["accuracy"] <= 1.0
        rows = [e for e in json.loads((run_dir / "log_history.json").read_text()) if "loss" in e]
        assert len(rows) == 2
        # rewards are logged on the generation step; step 2 trains on the buffered second half of the batch
        assert "rewards/accuracy_reward/mean" in rows[0] and "rewards/format_reward/mean" in rows[0]
        for row in rows:
            assert math.isfinite(row["grad_norm"]) and row["kl_to_init"] >= 0.0
            if run["arm"] == "sapo":
                assert "sapo/ratio_max" in row and "clip_ratio/region_mean" not in row
            else:
                assert "clip_ratio/region_mean" in row and "sapo/ratio_max" not in row
        # lr 1e-3 with a dense reward: the policy moves, so the probe KL after step 2 is > 0
        assert rows[-1]["kl_to_init"] > 0.0
        assert rows[-1]["grad_norm"] > 0.0
    sapo_run = next(r for r in result["runs"] if r["arm"] == "sapo")
    # off-policy regime: by the last step the ratio has left 1 (num_iterations=2 reuses the batch)
    assert sapo_run["summary"]["ratio_max"]["max"] > 1.0

    # Re-running skips finished runs (done.json) and only re-aggregates: same per-run results.
    marker = out_dir / "sapo-seed0" / "log_history.json"
    marker.write_text("[]")  # a retrained run would rewrite its log
    _run(args, timeout=300)
    again = json.loads((results_dir / "learning-smoke.json").read_text())
    assert again["runs"] == result["runs"] and marker.read_text() == "[]"
