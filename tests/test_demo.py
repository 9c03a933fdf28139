"""`make demo`'s script end to end on a tiny model: evaluation before/after, the real training script, the report
and summary.json. (The real demo, SmolLM2 for 12 steps, takes ~15 minutes; its numbers are in the README.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_sapo.tools.offline import OFFLINE_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_the_script_and_writes_a_summary(tmp_path, tiny_model_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier demo")  # a demo is a fresh run: the folder is replaced
    command = [sys.executable, "scripts/demo.py", "--model_name_or_path", str(tiny_model_path)]
    command += ["--output_dir", str(out), "--max_steps", "2", "--num_eval_examples", "8"]
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert "scripts/gsm8k_sapo.py --config" in proc.stdout and "recipes/smollm2-135m_cpu_demo.yaml" in proc.stdout
    assert "{'loss'" not in proc.stdout  # per-step dicts are summarised, not printed
    assert "accuracy, all held-out problems (n=8)" in proc.stdout and "wall time:" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert not (out / "stale.txt").exists() and (out / "trainer_state.json").exists()
    assert set(summary["subsets"]) == {"same kind as training", "unseen phrasings", "all held-out problems"}
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
