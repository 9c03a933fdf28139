"""The benchmark scripts' --smoke modes run end to end and write complete, finite, self-consistent JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT

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
        ["-m", "benchmarks.loss_overhead", "--smoke", "--proto", "--proto_trainer", "--output", str(out)], timeout=170
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
    args = ["-m", "benchmarks.learning", "--smoke", "--output_dir", str(out_dir), "--results_dir", str(results_dir)]
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


def test_learning_gsm8k_task_end_to_end(tmp_path, tiny_model_path):
    """The realism harness (--task gsm8k) on a tiny model: both regimes' settings reach the trainer, the held-out mix
    is scored per operation, the objective's own diagnostics are recorded, and the run resumes from done.json."""
    out_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    args = ["-m", "benchmarks.learning", "--task", "gsm8k", "--model", str(tiny_model_path), "--seeds", "0",
            "--regimes", "reuse", "--max_steps", "2", "--eval_examples", "8", "--max_completion_length", "8",
            "--num_probe", "2", "--output_dir", str(out_dir), "--results_dir", str(results_dir)]  # fmt: skip
    _run(args, timeout=600)
    result = json.loads((results_dir / "learning_gsm8k.json").read_text())
    assert set(result["regimes"]["reuse"]["arms"]) == {"grpo", "sapo"}
    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "smollm2-135m_cpu_demo.yaml").read_text())
    accumulation = recipe.get("gradient_accumulation_steps", 1)
    for run in result["runs"]:
        assert run["steps"] == 2 and run["regime"] == "reuse"
        # reuse = 4 optimizer steps per rollout x 2 passes, in the recipe's micro-batches and aggregation
        settings = run["settings"]
        assert settings["steps_per_generation"] == 4 * accumulation and settings["num_iterations"] == 2
        assert settings["gradient_accumulation_steps"] == accumulation and settings["learning_rate"] == 1e-5
        assert settings["per_device_train_batch_size"] == recipe["per_device_train_batch_size"]
        assert settings["loss_type"] == recipe["loss_type"] and settings["temperature"] == recipe["temperature"]
        assert (
            settings["reward_funcs"] == recipe["reward_funcs"]
            and settings["reward_weights"] == recipe["reward_weights"]
        )
        if "overlong" in recipe["reward_funcs"]:  # the recipe's window, scaled to the 8-token limit of this test
            assert settings["soft_punish_cache"] == max(
                1, round(recipe["soft_punish_cache"] * 8 / recipe["max_completion_length"])
            )
        assert len(run["eval_after"]["correct"]) == 8 and sorted(set(run["eval_after"]["operations"])) == list("*+-/")
        extra = run["extra_series"]
        if run["arm"] == "sapo":
            assert all(0.0 <= g <= 4.0 for g in extra["sapo_gate_mean"]) and extra["clip_ratio"] == [None, None]
        else:
            assert all(0.0 <= c <= 1.0 for c in extra["clip_ratio"]) and extra["sapo_gate_mean"] == [None, None]
    state = json.loads((out_dir / "reuse" / "sapo-seed0" / "done.json").read_text())
    assert state["resumed_from"] is None and state["eval_before"]["accuracy"] == run["eval_before"]["accuracy"]


def _documented_commands(path: Path, script: str) -> list[list[str]]:
    """The argument lists of every `python <script> ...` command in a markdown file's ```bash blocks."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if script in words:
                commands.append(words[words.index(script) + 1 :])
    return commands


def test_documented_gpu_study_command_parses():
    """docs/results.md's GPU command for the realism study is accepted by the harness (argument parsing only; the
    CUDA check is what fails here, after every flag was recognised)."""
    from benchmarks import learning

    commands = _documented_commands(REPO_ROOT / "docs" / "results.md", "benchmarks.learning")
    gpu = [c for c in commands if "--device" in c and c[c.index("--device") + 1] == "cuda"]
    assert gpu, "docs/results.md shows no `python -m benchmarks.learning --device cuda` command"
    for argv in gpu:
        assert "--dataset" in argv and "--model" in argv
        with pytest.raises(SystemExit) as exc:
            learning.parse_args(argv)
        assert exc.value.code == 2  # argparse's error exit: must be the CUDA check, not an unknown flag
        parsed = learning.parse_args([*argv, "--report_only"])  # --report_only skips the CUDA check
        assert parsed.task == "gsm8k" and parsed.device == "cuda" and parsed.dataset.endswith("gsm8k")
